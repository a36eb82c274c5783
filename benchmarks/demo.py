"""A short demo: rnnext.RNN against torch.nn.RNN on the same weights, same process, same threads.

Method: torch.utils.benchmark.Timer.blocked_autorange (warm-up, then repeated blocks); the median is
reported. Outputs are checked equal before anything is timed.
"""

import torch
import torch.utils.benchmark as tb
from torch import nn

import rnnext

CASES = [  # (T, B, I, H)
    (10, 3, 100, 20),
    (100, 1, 64, 64),
    (100, 32, 128, 128),
]


def median_ms(fn) -> float:
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.3).median * 1e3


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, CPU")
    print(f"{'T,B,I,H':>16} {'mode':>9} {'torch.nn ms':>12} {'rnnext ms':>10} {'speedup':>8}")
    for T, B, I, H in CASES:
        ref = nn.RNN(I, H)
        new = rnnext.RNN(I, H)
        new.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, I, requires_grad=True)
        torch.testing.assert_close(new(x)[0], ref(x)[0])
        for mode in ("inference", "training"):
            def run(m, mode=mode):
                if mode == "inference":
                    with torch.no_grad():
                        m(x)
                else:
                    m(x)[0].sum().backward()

            t_ref = median_ms(lambda: run(ref))
            t_new = median_ms(lambda: run(new))
            print(f"{T},{B},{I},{H:>4} {mode:>9} {t_ref:12.3f} {t_new:10.3f} {t_ref / t_new:7.2f}x")


if __name__ == "__main__":
    main()
