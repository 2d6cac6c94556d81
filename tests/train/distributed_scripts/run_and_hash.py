"""`ia-train ARGS` (as `python -m ia_train ARGS`), and at the end each rank writes the sha256 of the
whole parameters it computes with to OUT/params-rank<R>.sha256: the test checks the ranks agree."""

import hashlib
import sys

from ia_train import cli
from ia_train.loop import Hooks
from ia_train.runtime import distributed


def hash_parameters(r):
    """After the last step: the sha256 of the whole parameters this rank computes with."""
    h = hashlib.sha256()
    with distributed.gathered(r.model):  # the whole parameters this rank computes with (FSDP's gathered copy)
        for name, p in r.model.lm.named_parameters():
            assert not hasattr(p, "full_tensor"), name  # a plain tensor, not a shard
            h.update(name.encode())
            h.update(p.detach().cpu().clone().numpy().tobytes())  # a copy: numpy() pins the storage FSDP frees
    (r.out / f"params-rank{r.d.rank}.sha256").write_text(h.hexdigest())


sys.exit(cli.main(sys.argv[1:], Hooks(on_train_end=hash_parameters)))
