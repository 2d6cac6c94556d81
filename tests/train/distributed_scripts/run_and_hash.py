"""`ia-train ARGS` (as `python -m ia_train ARGS`), and at the end each rank writes the sha256 of the
whole parameters it computes with to OUT/params-rank<R>.sha256: the test checks the ranks agree."""

import hashlib
import sys

from ia_train import cli, distributed, train

real_finish = train.finish


def finish(r, row, seconds):
    h = hashlib.sha256()
    with distributed.gathered(r.model):  # the whole parameters this rank computes with (FSDP's gathered copy)
        for name, p in r.model.lm.named_parameters():
            assert not hasattr(p, "full_tensor"), name  # a plain tensor, not a shard
            h.update(name.encode())
            h.update(p.detach().cpu().clone().numpy().tobytes())  # a copy: numpy() pins the storage FSDP frees
    (r.out / f"params-rank{r.d.rank}.sha256").write_text(h.hexdigest())
    return real_finish(r, row, seconds)


train.finish = finish
sys.exit(cli.main(sys.argv[1:]))
