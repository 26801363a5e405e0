"""Image–caption data for `fit`: folders with metadata, saved datasets, the crops and flips, the one-line errors."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import quiet_trainer, set_learning_rate
from PIL import Image

from ldm_lightning.errors import UserError
from ldm_lightning.finetune.images import ImageCaptionDataModule
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.module import LatentDiffusionModule


def write_folder(folder, images: dict[str, np.ndarray], captions: dict[str, object], fmt: str = "jsonl"):
    """Save uint8 HWC arrays as PNGs and their captions as imagefolder metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name)
    if fmt == "jsonl":
        lines = [json.dumps({"file_name": n, **({"text": c} if c is not ... else {})}) for n, c in captions.items()]
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    else:
        with open(folder / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "caption"])
            writer.writerows(captions.items())
    return folder


def solid(h: int, w: int, rgb=(255, 0, 127)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def halves(h: int, w: int) -> np.ndarray:
    """Left half red, right half blue: crops and flips show in the pixels."""
    pixels = solid(h, w, (0, 0, 255))
    pixels[:, : w // 2] = (255, 0, 0)
    return pixels


def loaded(folder, **kwargs) -> ImageCaptionDataModule:
    data = ImageCaptionDataModule(str(folder), **{"resolution": 16, **kwargs})
    data.setup("fit")
    return data


def test_folder_with_metadata_gives_pixels_in_minus_one_to_one_and_captions(tmp_path):
    images = {"a.png": solid(40, 24), "sub/b.png": halves(16, 32)}
    data = loaded(write_folder(tmp_path / "f", images, {"a.png": "pink", "sub/b.png": "red and blue"}))
    items = {item["prompt"]: item["pixel_values"] for item in data.dataset}
    assert set(items) == {"pink", "red and blue"}
    # A solid colour survives any resize: 255 → 1, 0 → −1, 127 → 127/127.5 − 1.
    expected = torch.tensor([1.0, -1.0, 127 / 127.5 - 1]).view(3, 1, 1).expand(3, 16, 16)
    assert torch.allclose(items["pink"], expected)
    # 16×32 needs no resize for a 16² square: the centre crop is columns 8..23 of the original.
    centre = torch.from_numpy(halves(16, 32)[:, 8:24].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert torch.equal(items["red and blue"], centre)
    batch = next(iter(data.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and len(batch["prompt"]) == 2


def test_csv_metadata_and_a_caption_column_named_caption(tmp_path):
    folder = write_folder(tmp_path / "f", {"x.png": solid(8, 8)}, {"x.png": "a solid square"}, fmt="csv")
    assert [item["prompt"] for item in loaded(folder).dataset] == ["a solid square"]


def test_random_flip_gives_both_orientations_and_nothing_else(tmp_path):
    folder = write_folder(tmp_path / "f", {"h.png": halves(16, 16)}, {"h.png": "x"})
    data = loaded(folder, random_flip=True)
    original = torch.from_numpy(halves(16, 16).astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    torch.manual_seed(0)
    seen = [data.dataset[0]["pixel_values"] for _ in range(40)]
    mirrored = [torch.equal(p, original.flip(-1)) for p in seen]
    assert all(m or torch.equal(p, original) for m, p in zip(mirrored, seen))
    assert 5 < sum(mirrored) < 35


def test_random_crop_is_a_window_of_the_resized_image(tmp_path):
    # A horizontal ramp 16×64: no resize for 16², so each crop must be 16 consecutive columns of it.
    ramp = np.repeat(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], 16, axis=0).repeat(3, axis=2)
    data = loaded(write_folder(tmp_path / "f", {"r.png": ramp}, {"r.png": "ramp"}), crop="random")
    torch.manual_seed(0)
    lefts = set()
    for _ in range(20):
        first = data.dataset[0]["pixel_values"][0, 0]
        left = int(round((float(first[0]) + 1) * 127.5)) // 4
        assert torch.allclose(first, torch.from_numpy(ramp[0, left : left + 16, 0].astype(np.float32)) / 127.5 - 1)
        lefts.add(left)
    assert len(lefts) > 3


def test_caption_dropout_empties_the_share_asked_for(tmp_path):
    folder = write_folder(tmp_path / "f", {"a.png": solid(8, 8)}, {"a.png": "kept"})
    torch.manual_seed(0)
    assert {loaded(folder, p_empty_caption=1.0).dataset[0]["prompt"] for _ in range(5)} == {""}
    assert {loaded(folder, p_empty_caption=0.0).dataset[0]["prompt"] for _ in range(5)} == {"kept"}
    dataset = loaded(folder, p_empty_caption=0.5).dataset
    empties = sum(dataset[0]["prompt"] == "" for _ in range(200))
    assert 70 < empties < 130


def test_saved_dataset_with_named_columns(tmp_path):
    import datasets

    table = datasets.Dataset.from_dict(
        {"picture": [Image.fromarray(solid(20, 20))], "description": [["one way", "another way"]]}
    ).cast_column("picture", datasets.Image())
    table.save_to_disk(str(tmp_path / "saved"))
    data = loaded(tmp_path / "saved", image_column="picture", caption_column="description")
    torch.manual_seed(0)
    assert {data.dataset[0]["prompt"] for _ in range(20)} == {"one way", "another way"}
    assert data.dataset[0]["pixel_values"].shape == (3, 16, 16)


def test_validation_rows_default_to_the_first_captions_with_fixed_seeds_once_across_ranks(tmp_path):
    names = [f"{i}.png" for i in range(6)]
    captions = dict(zip(names, ["c0", "c0", "", "c1", "c2", "c3"]))
    folder = write_folder(tmp_path / "f", {n: solid(8, 8) for n in names}, captions)
    data = loaded(folder, val_seed=10)
    assert [(r["prompt"], r["seed"]) for r in data.val_rows] == [("c0", 10), ("c1", 11), ("c2", 12), ("c3", 13)]
    given = loaded(folder, val_prompts=["p", "q", "r"], val_batch_size=1)
    per_rank = []
    for rank in range(2):
        given.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        per_rank.append([p for batch in given.val_dataloader() for p in batch["prompt"]])
    assert per_rank == [["p", "r"], ["q"]]  # every prompt once, none repeated to pad


def test_size_comes_from_the_module_and_fit_runs_on_pixels(tiny_model, tmp_path):
    names = [f"{i}.png" for i in range(4)]
    folder = write_folder(tmp_path / "f", {n: halves(24, 40) for n in names}, dict.fromkeys(names, "x"))
    module = LatentDiffusionModule(tiny_model, sampling=Sampling(height=32, width=32))
    set_learning_rate(module, 1e-3, warmup_steps=1)
    data = ImageCaptionDataModule(str(folder), batch_size=2)
    trainer = quiet_trainer(
        max_steps=2,
        limit_val_batches=0,
    )
    before = module.unet.conv_in.weight.clone()
    trainer.fit(module, data)
    assert data.dataset.height == data.dataset.width == 32
    assert not torch.equal(before, module.unet.conv_in.weight)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unreadable", "image bad.png is unreadable"),
        ("no_caption", "image b.png has no caption in 'text'"),
        ("empty", "holds no images"),
        ("no_metadata", "has no metadata.jsonl"),
        ("listed_missing", "image gone.png is listed but missing"),
        ("wrong_column", "has no column 'words' (columns: image, text)"),
    ],
)
def test_bad_input_is_one_line_naming_the_file_or_column(tmp_path, case, expected):
    folder = tmp_path / case
    kwargs = {}
    if case == "unreadable":
        write_folder(folder, {"a.png": solid(8, 8)}, {"a.png": "a", "bad.png": "b"})
        (folder / "bad.png").write_bytes(b"not an image")
    elif case == "no_caption":
        write_folder(folder, {"a.png": solid(8, 8), "b.png": solid(8, 8)}, {"a.png": "a", "b.png": ...})
    elif case == "empty":
        folder.mkdir()
    elif case == "no_metadata":
        folder.mkdir()
        Image.fromarray(solid(8, 8)).save(folder / "a.png")
    elif case == "listed_missing":
        write_folder(folder, {"a.png": solid(8, 8)}, {"a.png": "a", "gone.png": "b"})
    else:
        write_folder(folder, {"a.png": solid(8, 8)}, {"a.png": "a"})
        kwargs["caption_column"] = "words"
    with pytest.raises(UserError) as err:
        loaded(folder, **kwargs)
    message = str(err.value)
    assert expected in message and "\n" not in message, message


def test_shapes_folder_holds_the_asked_pairs_with_captions(tmp_path):
    from ldm_lightning.shapes.data import parse_caption
    from ldm_lightning.shapes.folder import write_folder as write_shapes
    from ldm_lightning.shapes.judge import judge

    folder = write_shapes(tmp_path / "stars", [("green", "star")], num_images=6, seed=0)
    data = loaded(folder, resolution=64)
    for item in data.dataset:
        pixels = ((item["pixel_values"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        verdict = judge(pixels)  # the pixel judge, independent of the drawing code
        assert (verdict.colour, verdict.shape) == ("green", "star")
        named = parse_caption(item["prompt"])
        assert named.get("shape") == "star" and named.get("colour", "green") == "green"
