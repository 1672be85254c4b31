"""A torchrun worker for tests/test_distributed.py (not a test module).

    torchrun --nproc_per_node=2 tests/ddp_worker.py OUT MODE [--resume RUN] key=value ...

Trains the mnist-bop recipe with the overrides through ``onebit.training.train`` and saves this
rank's final model state to ``OUT/rank<R>.pt`` (so the test can compare replicas). MODE:
``ok``; ``fail`` (rank 1 raises at its 4th optimizer step); ``diverge`` (rank 1 flips one extra
binary weight after its 4th optimizer step, which the replica check must catch).
"""

import os
import sys

import torch

import onebit.training.loop as loop
from onebit.optim import Bop
from onebit.recipes import load_recipe
from onebit.training import RunFolder, distributed, load_checkpoint, train
from onebit.training.config import apply_overrides


def main() -> int:
    out, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    resume = None
    if args and args[0] == "--resume":
        resume, args = args[1], args[2:]
    rank = int(os.environ.get("RANK", "0"))

    captured = {}
    build = loop.build_model

    def capture(*a, **k):
        captured["model"] = build(*a, **k)
        return captured["model"]

    loop.build_model = capture

    if mode in ("fail", "diverge") and rank == 1:
        step = Bop.step
        calls = [0]

        def patched(self, *a, **k):
            result = step(self, *a, **k)
            calls[0] += 1
            if calls[0] == 4:
                if mode == "fail":
                    raise RuntimeError("injected failure on rank 1")
                with torch.no_grad():
                    p = self.param_groups[0]["params"][0]
                    p[(0,) * p.dim()] *= -1
            return result

        Bop.step = patched

    base = load_checkpoint(RunFolder(resume).last)["config"] if resume else load_recipe("mnist-bop").config
    config = apply_overrides(base, args)
    summary = train(config, recipe="mnist-bop", resume=resume, verbose=rank == 0)
    torch.save({k: v.cpu() for k, v in captured["model"].state_dict().items()}, os.path.join(out, f"rank{rank}.pt"))
    if rank == 0:
        print("RUN_DIR", summary["run_dir"])
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
