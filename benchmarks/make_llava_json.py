"""Write a synthetic LLaVA-style corpus JSON of realistic size and mix, for benchmarks.

Defaults mimic llava_v1_5_mix665k.json: 665,298 records, about 10% text-only, about 5% of
image records naming an image another record already named, multi-turn conversations of
about 1.5 KB per record (the real file is about 1 GB).
"""

from __future__ import annotations

import argparse
import json
import random

WORDS = ("the a of bus red white image picture person table what color is on in left right "
         "describe detail window street dog cat sign two three shown background").split()
FOLDERS = ("coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K")


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--records", type=int, default=665_298)
    ap.add_argument("--text-only", type=float, default=0.10)
    ap.add_argument("--duplicates", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    seen: list[str] = []
    with open(args.out, "w") as fh:
        fh.write("[\n")
        for i in range(args.records):
            turns = []
            for t in range(rng.randint(1, 4)):
                q = sentence(rng, rng.randint(6, 20)) + "?"
                turns.append({"from": "human", "value": ("<image>\n" + q) if t == 0 else q})
                turns.append({"from": "gpt", "value": sentence(rng, rng.randint(20, 60)) + "."})
            rec: dict = {"id": f"{i:012d}"}
            r = rng.random()
            if r >= args.text_only:
                if seen and rng.random() < args.duplicates:
                    rec["image"] = rng.choice(seen)
                else:
                    rec["image"] = f"{rng.choice(FOLDERS)}/{i:012d}.jpg"
                    seen.append(rec["image"])
            rec["conversations"] = turns
            fh.write(("," if i else "") + json.dumps(rec) + "\n")
        fh.write("]\n")


if __name__ == "__main__":
    main()
