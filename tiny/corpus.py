"""The demo corpus: a few dozen small generated scenes with the quirks of real corpora.

Scenes are coloured shapes on gradient backgrounds (things a detector and SAM can find),
drawn deterministically from a seed. Beside them lie the kinds of files LLaVA corpora
really contain: grayscale, CMYK, palette, RGBA and 16-bit images, an animated GIF, a PNG
named .jpg, an EXIF-rotated photo and one broken file. A LLaVA-Instruct-style JSON names
them, with text-only records, images named twice and a path that leaves the image root.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SCENES = 20


def draw_scene(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    w, h = size
    top, bottom = np.array([rng.randrange(256) for _ in range(3)]), np.array([rng.randrange(256) for _ in range(3)])
    ramp = np.linspace(0, 1, h)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).astype(np.uint8).repeat(w, axis=1)
    img = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 6)):
        x0, y0 = rng.randrange(w - 20), rng.randrange(h - 20)
        x1, y1 = rng.randrange(x0 + 10, min(w, x0 + w // 2) + 11), rng.randrange(y0 + 10, min(h, y0 + h // 2) + 11)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice(("rectangle", "ellipse", "triangle"))
        if shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon(((x0, y1), ((x0 + x1) // 2, y0), (x1, y1)), fill=colour)
    return img


def write_quirks(rng: random.Random, folder: Path) -> list[str]:
    """Files with the formats and faults of real corpora; returns their ids."""
    base = draw_scene(rng, (240, 180))
    folder.mkdir(parents=True, exist_ok=True)
    base.convert("L").save(folder / "gray.jpg")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    rgba.save(folder / "rgba.png")
    deep = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(deep).save(folder / "deep16.png")
    frames = [draw_scene(rng, (160, 120)) for _ in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    base.save(folder / "png_named.jpg", format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    base.save(folder / "rotated_exif.jpg", exif=exif)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return [f"quirks/{p}" for p in ("gray.jpg", "cmyk.jpg", "palette.png", "rgba.png", "deep16.png",
                                    "animated.gif", "png_named.jpg", "rotated_exif.jpg", "broken.jpg")]


def write_demo_corpus(root: Path, seed: int = 0, scenes: int = SCENES) -> Path:
    """Write images under ``root/images`` and ``root/demo_instruct.json``; return the JSON path."""
    rng = random.Random(seed)
    images = root / "images"
    ids = []
    for i in range(scenes):
        size = rng.choice(((320, 240), (240, 320), (400, 300), (256, 256), (500, 200)))
        image_id = f"scenes/{i:03d}.jpg" if i % 4 else f"scenes/{i:03d}.png"
        (images / image_id).parent.mkdir(parents=True, exist_ok=True)
        draw_scene(rng, size).save(images / image_id)
        ids.append(image_id)
    ids += write_quirks(rng, images / "quirks")

    def record(n: int, image: str | None) -> dict:
        rec: dict = {"id": f"demo-{n:04d}"}
        if image is not None:
            rec["image"] = image
        rec["conversations"] = [
            {"from": "human", "value": ("<image>\n" if image else "") + "What is in the picture?"},
            {"from": "gpt", "value": "Some coloured shapes on a gradient."},
        ]
        return rec

    records = [record(n, image_id) for n, image_id in enumerate(ids)]
    records += [record(len(records) + k, ids[k]) for k in range(3)]  # images named twice
    records += [record(len(records) + k, None) for k in range(2)]  # text-only (ShareGPT-like)
    records.append(record(len(records), "../outside.jpg"))  # a path that leaves the root
    source = root / "demo_instruct.json"
    source.write_text(json.dumps(records, indent=1))
    return source
