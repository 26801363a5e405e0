"""`test` runs side by side in TensorBoard: read back with TensorBoard's own event reader and HParams backend."""

import io
import json

import numpy as np
import pytest
from helpers import manifest, quiet_trainer
from PIL import Image

PROMPTS = ["a red circle", "a blue square", "a green star", "a red cross", "a white circle"]
CATEGORIES = ["round", "angular", "angular", "angular", "round"]


@pytest.fixture(scope="module")
def board(tiny_model, tiny_clip, tmp_path_factory):
    """Two `test` runs in one log root, as the command line makes them: guidance 1 on a grouped prompt table, and
    guidance 3 on the first four prompts with FD-CLIP and CMMD against drawn reference shapes."""
    from ldm_lightning import LatentDiffusionModule, PromptDataModule
    from ldm_lightning.evaluation.metrics import ClipScore
    from ldm_lightning.generation.guidance import ClassifierFreeGuidance
    from ldm_lightning.generation.sampler import Sampling
    from ldm_lightning.run_folder.attach import attach_run_folder
    from ldm_lightning.shapes.reference import draw_reference

    root = tmp_path_factory.mktemp("board")
    table = root / "suite.jsonl"
    table.write_text("".join(json.dumps({"prompt": p, "shape": c}) + "\n" for p, c in zip(PROMPTS, CATEGORIES)))
    draw_reference(root / "reference", PROMPTS, per_prompt=2)
    settings = {"sampling": Sampling(num_inference_steps=3, height=32, width=32)}
    quality = [ClipScore(tiny_clip), "fd_clip", "cmmd"]
    runs = {
        "g1": (
            LatentDiffusionModule(
                tiny_model,
                guidance=ClassifierFreeGuidance(guidance_scale=1.0),
                metrics=[ClipScore(tiny_clip)],
                **settings,
            ),
            PromptDataModule(prompts=str(table), batch_size=2, group_by=["shape"]),
        ),
        "quality": (
            LatentDiffusionModule(
                tiny_model, guidance=ClassifierFreeGuidance(guidance_scale=3.0), metrics=quality, **settings
            ),
            PromptDataModule(prompts=PROMPTS, limit=4, batch_size=2, reference=str(root / "reference")),
        ),
    }
    returned = {}
    for name, (module, data) in runs.items():
        trainer = quiet_trainer()
        attach_run_folder(trainer, module, data, "test", root / name)
        returned[name] = trainer.test(module, datamodule=data, verbose=False)[0]
    return root, returned


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()


def test_each_run_draws_its_score_across_its_rows_and_their_histogram_without_noise(board):
    root, returned = board
    for name, n in (("g1", 5), ("quality", 4)):
        scores = np.array([r["clip_score"] for r in manifest(root / name, "results.jsonl")])
        tb = events(root / name)
        line = tb.Scalars("test/clip_score")
        assert [p.step for p in line] == [0, n - 1]  # two points a run: TensorBoard's outlier cut keeps every run
        assert [p.value for p in line] == pytest.approx([scores.mean()] * 2, abs=1e-4)
        [histogram] = tb.Histograms("test/clip_score_per_row")
        assert histogram.histogram_value.num == n
        assert histogram.histogram_value.sum == pytest.approx(scores.sum(), abs=1e-3)
        assert histogram.histogram_value.min == pytest.approx(scores.min(), abs=1e-4)
        tags = set(tb.Tags()["scalars"])
        assert "epoch" not in tags and not any(t.startswith("hp/") for t in tags)
        assert not tags & {"test/clip_score_std", "test/clip_score_ci95_low", "test/n"}  # in summary.json, not charts
        # `trainer.test` still returns the whole summary
        assert returned[name]["test/clip_score"] == pytest.approx(scores.mean(), abs=1e-4)
        assert returned[name]["test/n"] == n and "test/clip_score_ci95_low" in returned[name]
    assert set(events(root / "quality").Tags()["scalars"]) >= {"test/fd_clip", "test/cmmd"}


def experiment(root):
    """The experiment TensorBoard's HParams tab shows for this log root, from its own backend."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, metadata

    runs = plugin_event_multiplexer.EventMultiplexer()
    runs.AddRunsFromDirectory(str(root))
    runs.Reload()
    provider = data_provider.MultiplexerDataProvider(runs, str(root))
    backend = backend_context.Context(base_plugin.TBContext(data_provider=provider, multiplexer=runs, logdir=str(root)))
    request = context.RequestContext()
    content = backend.hparams_metadata(request, "")
    assert not any(metadata.EXPERIMENT_TAG in tags for tags in content.values())  # else TensorBoard shows just one
    return backend.experiment_from_metadata(
        request, "", True, content, backend.hparams_from_data_provider(request, "", None)
    ), content


def first_five(items):
    """The columns TensorBoard's HParams table shows before the user ticks more: those that differ between runs
    first (a stable sort), then five (tf-hparams-query-pane in TensorBoard 2.21's web app)."""
    return [i for i in sorted(items, key=lambda i: not getattr(i, "differs", False))][:5]


def test_hparams_lists_every_runs_metrics_and_shows_the_settings_and_prompt_set(board):
    from tensorboard.plugins.hparams import metadata

    root, _ = board
    found, content = experiment(root)
    metrics = [m.name.tag for m in found.metric_infos]
    assert {"test/clip_score", "test/fd_clip", "test/cmmd"} <= set(metrics)
    assert {"test/clip_score", "test/fd_clip", "test/cmmd"} <= set(m.name.tag for m in first_five(found.metric_infos))
    shown = [h.name for h in first_five(found.hparam_infos)]
    assert set(shown) == {"guidance_scale", "precision", "prompts", "rows", "sampler"}
    sessions = {
        run.split("/")[0]: metadata.parse_session_start_info_plugin_data(tags[metadata.SESSION_START_INFO_TAG])
        for run, tags in content.items()
        if metadata.SESSION_START_INFO_TAG in tags
    }
    assert set(sessions) == {"g1", "quality"}
    g1, quality = (sessions[k].hparams for k in ("g1", "quality"))
    assert (g1["prompts"].string_value, g1["rows"].number_value, g1["seed"].number_value) == ("suite.jsonl", 5, 0)
    assert (quality["prompts"].string_value, quality["rows"].number_value) == ("inline list", 4)
    assert (g1["guidance_scale"].number_value, quality["guidance_scale"].number_value) == (1.0, 3.0)
    assert g1["sampler"].string_value == "ddim, 3 steps" and g1["size"].string_value == "32x32"
    assert quality["test_reference"].string_value == str(root / "reference")
    assert "test_reference" not in g1 and not {"revision", "variant", "eta"} & set(g1)


def test_batches_name_their_rows_in_text_and_captions(board):
    root, _ = board
    tb = events(root / "g1")
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in tb.Tensors("test/batch_prompts/text_summary")}
    assert "`00002`" in texts[1] and "`00003`" in texts[1]  # the second batch: Markdown cannot renumber these
    [first, *_] = tb.Images("test/batch")
    grid = Image.open(io.BytesIO(first.encoded_image_string))
    assert grid.width == 2 * 160 and grid.height > 160  # two 32² images scaled to 160 px, each above its caption


def test_group_chart_spans_the_means_and_labels_them():
    from ldm_lightning.evaluation.groups import group_summary, groups_figure

    rng = np.random.default_rng(0)
    rows = [{"c": "a", "clip_score": s} for s in 69.2 + rng.normal(0, 0.3, 20)]
    rows += [{"c": "b", "clip_score": s} for s in 71.6 + rng.normal(0, 0.3, 20)]
    means = [np.mean([r["clip_score"] for r in rows if r["c"] == c]) for c in "ab"]
    figure = groups_figure(group_summary(rows, ["c"]))
    [ax] = figure.axes
    low, high = ax.get_xlim()
    assert 60 < low < min(means) and max(means) < high < 80  # not from 0: 69 and 72 look different
    labels = {t.get_text() for t in ax.texts}
    assert {f"{m:.1f}" for m in means} <= labels
