"""Image–caption training data for `fit`: an image folder with captions, a saved 🤗 dataset, or a hub dataset.

An image folder follows 🤗 datasets' `imagefolder` convention: image files plus a `metadata.jsonl`
(or `.csv`) whose `file_name` column names each image and whose other columns (a caption among them)
describe it. Images are resized so the shorter side fits, cropped to the model's size and optionally
flipped, as diffusers' `train_text_to_image.py` prepares them; the VAE encodes them in the module's
`training_step`, so the data stays pixels.
"""

import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningDataModule
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ldm_lightning.console import shows_progress
from ldm_lightning.errors import UserError
from ldm_lightning.interfaces import ImageSize
from ldm_lightning.locations import written_as_path
from ldm_lightning.tables import is_saved_dataset, parser_error, read_saved_dataset

Crop = Literal["center", "random"]
# The usual caption column names: `text` (imagefolder examples, diffusers' scripts), then `caption`, `prompt`.
CAPTION_COLUMNS = ("text", "caption", "prompt")
DEFAULT_NUM_VAL_PROMPTS = 4


def read_image_table(path: str, split: str):
    """The images and their columns as a 🤗 dataset whose images stay undecoded ({"path", "bytes"})."""
    import datasets

    folder = Path(path).expanduser()
    try:
        if is_saved_dataset(folder):
            table = read_saved_dataset(folder, "data.path")
        elif folder.is_dir():
            image_suffixes = set(Image.registered_extensions())
            if not any(f.suffix.lower() in image_suffixes for f in folder.rglob("*") if f.is_file()):
                raise UserError(f"data.path: {folder} holds no images; add images and a metadata.jsonl")
            if not any(f.suffix in (".jsonl", ".csv", ".parquet") for f in folder.rglob("metadata.*")):
                raise UserError(
                    f"data.path: {folder} has no metadata.jsonl or metadata.csv; add one with a `file_name` "
                    "column (the image's path inside the folder) and a caption column such as `text`"
                )
            table = datasets.load_dataset("imagefolder", data_dir=str(folder))
        elif written_as_path(path) or folder.suffix:
            raise UserError(f"data.path: no folder at {path!r}; give an image folder, a saved dataset or a hub id")
        else:
            table = datasets.load_dataset(path)
    except UserError:
        raise
    except Exception as err:  # datasets raises many kinds (empty folder, bad metadata, unknown hub id)
        raise UserError(f"data.path: could not read {path!r} as images with captions ({parser_error(err)})") from None
    if isinstance(table, datasets.DatasetDict):
        if split not in table:
            raise UserError(f"data.split: {path} has no split {split!r} (splits: {', '.join(table)}); choose one")
        table = table[split]
    if len(table) == 0:
        raise UserError(f"data.path: {path} holds no images; add some")
    return table


def column_of(columns: list[str], wanted: str | None, candidates: tuple[str, ...], key: str, path: str) -> str:
    """The column `wanted`, else the first of `candidates` present; a missing one names the columns there are."""
    for name in [wanted] if wanted else candidates:
        if name in columns:
            return name
    names = " or ".join(map(repr, [wanted] if wanted else candidates))
    raise UserError(f"{key}: {path} has no column {names} (columns: {', '.join(columns)}); name the right one")


def image_name(value: dict[str, Any], row: int, root: Path | None) -> str:
    """How an error names an image: its path (inside the folder when there is one), else its row."""
    path = value.get("path") if isinstance(value, dict) else None
    if not path:
        return f"row {row}"
    if root is not None:
        try:
            return str(Path(path).relative_to(root.resolve()))
        except ValueError:
            pass
    return str(path)


def open_image(value: dict[str, Any], name: str) -> Image.Image:
    """An undecoded 🤗 image ({"path", "bytes"}) as a PIL image (lazy: the header is read, the pixels not yet)."""
    try:
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        return Image.open(value["path"])
    except (OSError, UnidentifiedImageError, TypeError) as err:
        raise UserError(f"data.path: image {name} is unreadable ({type(err).__name__}); replace or remove it") from None


def fit_to(image: Image.Image, height: int, width: int, crop: Crop, flip: bool) -> torch.Tensor:
    """RGB image → (3, height, width) in [-1, 1]: scale so it covers the size, crop, maybe mirror.

    The order of diffusers' train_text_to_image.py (Resize, Center/RandomCrop, RandomHorizontalFlip,
    Normalize([0.5], [0.5])); bilinear resampling as its default.
    """
    image = image.convert("RGB")
    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    spare_x, spare_y = image.width - width, image.height - height
    if crop == "random":
        left = int(torch.randint(spare_x + 1, ()))
        top = int(torch.randint(spare_y + 1, ()))
    else:
        left, top = spare_x // 2, spare_y // 2
    image = image.crop((left, top, left + width, top + height))
    if flip and float(torch.rand(())) < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


class ImageCaptions(Dataset):
    """Items {"pixel_values": (3, H, W) in [-1, 1], "prompt": str} from a table of undecoded images and captions.

    Random choices (crop, flip, caption dropout, one of several captions) draw from torch's global
    generator, which Lightning's `seed_everything` and the DataLoader's per-worker seeding make repeatable.
    """

    def __init__(
        self,
        images: list[dict[str, Any]],
        captions: list[str | list[str]],
        names: list[str],
        height: int,
        width: int,
        crop: Crop = "center",
        flip: bool = False,
        p_empty_caption: float = 0.0,
    ):
        self.images, self.captions, self.names = images, captions, names
        self.height, self.width, self.crop, self.flip, self.p_empty = height, width, crop, flip, p_empty_caption

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        image = open_image(self.images[index], name)
        try:
            pixels = fit_to(image, self.height, self.width, self.crop, self.flip)
        except OSError as err:  # a truncated or corrupt file fails only when its pixels are decoded
            raise UserError(f"data.path: image {name} is unreadable ({err}); replace or remove it") from None
        caption = self.captions[index]
        if isinstance(caption, list):  # several captions per image: one at random each time
            caption = caption[int(torch.randint(len(caption), ()))]
        if self.p_empty and float(torch.rand(())) < self.p_empty:
            caption = ""
        return {"pixel_values": pixels, "prompt": caption}


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items]), "prompt": [i["prompt"] for i in items]}


class ImageCaptionDataModule(LightningDataModule):
    """`fit` data from your images and captions; validation prompts with fixed seeds for the module's sampler."""

    def __init__(
        self,
        path: str,
        image_column: str | None = None,
        caption_column: str | None = None,
        split: str = "train",
        resolution: int | None = None,
        crop: Crop = "center",
        random_flip: bool = False,
        p_empty_caption: float = 0.0,
        batch_size: int = 4,
        num_workers: int = 0,
        val_prompts: str | list[str] | None = None,
        val_seed: int = 0,
        val_batch_size: int = 4,
    ):
        """
        Args:
            path: an image folder with metadata.jsonl / metadata.csv (`file_name` + a caption column,
                🤗 imagefolder's layout, split subfolders allowed), a folder written by
                `Dataset.save_to_disk`, or a 🤗 hub dataset id (cached or downloadable).
            image_column: column holding the images. Default: `image`.
            caption_column: column holding the captions (text, or a list of texts to pick from at
                random). Default: the first of `text`, `caption`, `prompt` present.
            split: split to train on, for data with several.
            resolution: side of the square training images in pixels. Default: the model's own
                height and width (read from the module when `fit` starts).
            crop: "center", or "random" (a different crop each time an image is served).
            random_flip: mirror half of the images left–right (not for data where sides matter).
            p_empty_caption: share of empty captions, so the model keeps the unconditional estimate
                that classifier-free guidance needs (Ho & Salimans 2022: 10–20%).
            batch_size: images per training batch (per process).
            num_workers: DataLoader worker processes that read and resize images.
            val_prompts: prompts that validation samples with the module's sampler: an inline list or
                a prompt file (.txt one per line, or a table as for `data.prompts`). Default: the first
                4 distinct captions of the training data.
            val_seed: validation prompt i uses seed `val_seed + i`, the same at every validation.
            val_batch_size: validation prompts per batch.
        """
        super().__init__()
        if batch_size < 1 or val_batch_size < 1:
            bad, value = ("data.batch_size", batch_size) if batch_size < 1 else ("data.val_batch_size", val_batch_size)
            raise UserError(f"{bad}: must be at least 1, got {value}")
        if not 0.0 <= p_empty_caption <= 1.0:
            raise UserError(f"data.p_empty_caption: must be in [0, 1], got {p_empty_caption}; try 0.1")
        if resolution is not None and resolution < 1:
            raise UserError(f"data.resolution: must be a positive number of pixels, got {resolution}")
        if crop not in Crop.__args__:
            raise UserError(f"data.crop: {crop!r} is not one of {', '.join(Crop.__args__)}")
        self.save_hyperparameters()
        self.dataset: ImageCaptions | None = None
        self.val_rows: list[dict[str, Any]] = []

    def size(self) -> tuple[int, int]:
        """(height, width) of the training images: `resolution`, else the module's own size."""
        if self.hparams.resolution is not None:
            return self.hparams.resolution, self.hparams.resolution
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not isinstance(module, ImageSize):
            raise UserError("data.resolution: no model to take the image size from; give --data.resolution")
        return module.height, module.width

    def load(self, height: int, width: int) -> ImageCaptions:
        """Read and check the table: its columns, every caption, every image's header."""
        import datasets

        hp = self.hparams
        table = read_image_table(hp.path, hp.split)
        image_key = column_of(table.column_names, hp.image_column, ("image",), "data.image_column", hp.path)
        caption_key = column_of(table.column_names, hp.caption_column, CAPTION_COLUMNS, "data.caption_column", hp.path)
        if isinstance(table.features[image_key], datasets.Image):
            table = table.cast_column(image_key, datasets.Image(decode=False))
        elif not isinstance(table.features[image_key], datasets.Value):
            raise UserError(f"data.image_column: {image_key!r} in {hp.path} holds no images; name the image column")
        root = Path(hp.path).expanduser() if Path(hp.path).expanduser().is_dir() else None
        images = [{"path": v, "bytes": None} if isinstance(v, str) else v for v in table[image_key]]
        if root is not None:  # a column of file paths is read relative to the folder
            images = [dict(v, path=str(root / v["path"])) if v["path"] and not v["bytes"] else v for v in images]
        names = [image_name(v, i, root) for i, v in enumerate(images)]
        captions = table[caption_key]
        for name, value in zip(names, captions):
            texts = value if isinstance(value, list) else [value]
            if not texts or not all(isinstance(t, str) for t in texts):
                raise UserError(
                    f"data.caption_column: image {name} has no caption in {caption_key!r} (found {value!r}); "
                    'give every image a caption ("" for none)'
                )
        # Every header is read once here, so a bad file fails before training; thousands take a while.
        checking = tqdm(
            zip(names, images),
            total=len(images),
            desc="checking images",
            unit="img",
            leave=False,
            disable=not shows_progress(self.trainer),
        )
        for name, value in checking:
            if value["bytes"] is None and not Path(value["path"] or "").is_file():
                raise UserError(f"data.path: image {name} is listed but missing; add it or remove its row")
            open_image(value, name).close()
        return ImageCaptions(images, captions, names, height, width, hp.crop, hp.random_flip, hp.p_empty_caption)

    def setup(self, stage: str) -> None:
        if self.dataset is None:
            self.dataset = self.load(*self.size())
        if not self.val_rows:
            self.val_rows = self.read_val_rows()

    def read_val_rows(self) -> list[dict[str, Any]]:
        """Validation rows {index, prompt, negative_prompt, seed}, as `predict` reads its prompts."""
        from ldm_lightning.data import read_rows

        prompts = self.hparams.val_prompts
        if prompts is None:
            seen = dict.fromkeys(c if isinstance(c, str) else c[0] for c in self.dataset.captions)
            prompts = [c for c in seen if c][:DEFAULT_NUM_VAL_PROMPTS] or [""]
        return read_rows(prompts, self.hparams.val_seed)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.dataset,
            batch_size=hp.batch_size,
            shuffle=True,
            num_workers=hp.num_workers,
            collate_fn=collate_images,
            persistent_workers=hp.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """Each validation prompt on one process, the same rows in the same order every time (as `test` splits them)."""
        from ldm_lightning.data import PromptRows, RankSlice, collate

        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        rows = PromptRows(self.val_rows)
        sampler = RankSlice(rows, num_replicas=world, rank=rank)
        return DataLoader(rows, batch_size=self.hparams.val_batch_size, sampler=sampler, collate_fn=collate)
