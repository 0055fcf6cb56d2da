"""JPEG decoding per CPU core: torchvision.io against PIL, on the same files, in one run.

    python benchmarks/jpeg_decode.py [--images 200]

Writes JPEGs of ImageNet-like (500 x 375) and iNaturalist-like (800 x 600) sizes to a temporary folder
(random smooth images at quality 90), then reads each set through ltkit's split-file dataset with the
training transform (decode, RandomResizedCrop 224, flip, to float) in one process with one thread: the
work one DataLoader worker does per image.  Prints images/s of each decoder installed (PIL, torchvision.io,
TorchCodec when installed) and their ratios to PIL.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ltkit import train
from ltkit.data import ImageListDataset, resolve_decoder

SIZES = {"ImageNet-like 500x375": (375, 500), "iNaturalist-like 800x600": (600, 800)}


def write_images(root: Path, n: int, shape: tuple[int, int]) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        small = rng.integers(0, 256, (shape[0] // 25 + 1, shape[1] // 25 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((shape[1], shape[0]), Image.BICUBIC)  # smooth, photo-like sizes
        image.save(root / f"{i}.jpg", quality=90)
        lines.append(f"{i}.jpg 0")
    split = root / "split.txt"
    split.write_text("\n".join(lines) + "\n")
    return split


def images_per_second(dataset: ImageListDataset, repeats: int = 2) -> float:
    best = 0.0
    for _ in range(repeats):
        torch.manual_seed(0)
        started = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        best = max(best, len(dataset) / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transform = train.file_transforms(train.preset("imagenet-lt"), train=True)
    decoders = ["pil", "torchvision"] + (["torchcodec"] if resolve_decoder("auto") == "torchcodec" else [])
    print(f"{'images':26}" + "".join(f"{d + ' img/s':>18}" for d in decoders) + "   ratios to PIL")
    for name, shape in SIZES.items():
        with tempfile.TemporaryDirectory() as folder:
            split = write_images(Path(folder), args.images, shape)
            rates = {d: images_per_second(ImageListDataset(folder, split, transform, decoder=d)) for d in decoders}
        ratios = ", ".join(f"{d} {rates[d] / rates['pil']:.2f}x" for d in decoders[1:])
        print(f"{name:26}" + "".join(f"{rates[d]:18.0f}" for d in decoders) + f"   {ratios}")


if __name__ == "__main__":
    main()
