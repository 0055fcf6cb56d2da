"""Worker of tests/test_ddp.py: under torchrun, train every case of a JSON list in one process group.

    torchrun --standalone --nproc_per_node=W tests/ddp_cases.py cases.json OUT_DIR

Each case is a dict of TrainConfig overrides on the digits-lt preset; runs are written to OUT_DIR/<name>.
"""

import json
import sys

from ltkit import train


def main(cases_path: str, out_dir: str) -> None:
    for case in json.loads(open(cases_path).read()):
        train.fit("digits-lt", out_dir=out_dir, progress=False, **case)


if __name__ == "__main__":
    main(*sys.argv[1:3])
