"""``rnnext.convert``: swap every ``torch.nn.RNN`` / ``torch.nn.RNNCell`` in a model for rnnext's."""

from __future__ import annotations

from typing import Optional

from torch import nn
from torch.nn.utils import parametrize

from .modules import RNN, RNNCell

__all__ = ["convert"]

# Exact types only: a user's subclass may override forward, which a swap would silently drop.
_REPLACEMENTS: dict[type, type] = {nn.RNN: RNN, nn.RNNCell: RNNCell}

# Containers that get their own copy in the replacement (their entries, the Parameter objects
# included, stay shared). Everything else in the module's __dict__ is taken as is.
_COPIED = (
    "_parameters",
    "_buffers",
    "_modules",
    "_non_persistent_buffers_set",
    "_flat_weights",
    "_flat_weights_names",
    "_all_weights",
    "_flat_weight_refs",
)


def _target(module: nn.Module) -> Optional[type]:
    """The class that replaces ``module``, or None to leave it as it is."""
    cls = type(module)
    if cls in _REPLACEMENTS:
        return _REPLACEMENTS[cls]
    # torch.nn.utils.parametrize (weight_norm, spectral_norm, custom) gives each parametrized
    # module its own subclass holding the parametrized attributes as properties: rebuild that
    # subclass on top of the rnnext class.
    if parametrize.is_parametrized(module) and len(cls.__bases__) == 1 and cls.__bases__[0] in _REPLACEMENTS:
        body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        return type(cls.__name__, (_REPLACEMENTS[cls.__bases__[0]],), body)
    return None


def _replacement(module: nn.Module, cls: type) -> nn.Module:
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for key in _COPIED:
        if key in state:
            state[key] = type(state[key])(state[key])
    # Bypass nn.Module.__setattr__ (and RNNBase's): this is a plain copy of the instance state.
    object.__setattr__(new, "__dict__", state)
    return new


def convert(module: nn.Module) -> nn.Module:
    """Replaces every ``torch.nn.RNN`` and ``torch.nn.RNNCell`` inside ``module`` by
    :class:`rnnext.RNN` / :class:`rnnext.RNNCell`, in place, and returns ``module``.

    If ``module`` itself is a ``torch.nn.RNN`` or ``torch.nn.RNNCell``, its replacement is
    returned (a module cannot change its own type in its parents): use
    ``model = rnnext.convert(model)``.

    Each replacement takes over the original's state as it is:

    - the **same** ``Parameter`` objects (not copies), so an optimizer built before the conversion
      keeps updating the weights the model uses, and device, dtype and ``requires_grad`` stay;
    - the training mode, the configuration (sizes, layers, bias, batch_first, dropout,
      bidirectional, nonlinearity) and any extra attributes;
    - the hooks (forward, forward-pre, backward, state-dict hooks): the hook dictionaries are
      shared, so removing a hook through a handle made before the conversion still works.

    A module reached through several parents (shared) gets a single replacement. Only those exact
    types are converted, and their parametrized forms (``torch.nn.utils.parametrize``, e.g.
    ``weight_norm``), which keep their parametrizations; other subclasses (which may override
    ``forward``) and TorchScript modules are left as they are. The original modules should not be used
    afterwards: they share their parameters and hooks with their replacements.

    Example::

        >>> model = nn.Sequential(nn.Linear(8, 8), nn.RNN(8, 16, num_layers=2))
        >>> model = rnnext.convert(model)
        >>> type(model[1])
        <class 'rnnext.modules.RNN'>
    """
    done: dict[int, nn.Module] = {}

    def swap(m: nn.Module) -> nn.Module:
        if id(m) not in done:
            cls = _target(m)
            done[id(m)] = m if cls is None else _replacement(m, cls)
        return done[id(m)]

    root = swap(module)
    for parent in list(root.modules()):
        children = parent._modules
        for name, child in list(children.items()):
            if child is not None:
                children[name] = swap(child)
    return root
