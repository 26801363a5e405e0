"""The metric-cost bench: its stand-in HPS checkpoint is the tiny CLIP under OpenCLIP's names, and its report
is medians of the runs, differences and ratios against CLIPScore alone."""

import statistics

import torch


def test_stand_in_hps_checkpoint_renames_back_to_the_clip(tiny_clip):
    from transformers import CLIPModel

    from ldm_lightning.evaluation.openclip_keys import openclip_to_transformers
    from ldm_lightning.testing import openclip_named

    state = CLIPModel.from_pretrained(tiny_clip).state_dict()
    named = openclip_named(state)
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in named and "text_projection" in named
    back = openclip_to_transformers(named)
    expected = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    assert set(back) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)


def test_report_is_medians_against_clip_score_alone():
    from ldm_lightning.lab.metric_cost import report

    run = lambda w, s, load: {"wall_s": w, "cpu_s": w / 2, "images": 4, "seconds_per_image": s, "load": load}  # noqa: E731
    runs = {
        "clip_score": [run(10, 0.5, 1.0), run(12, 0.7, 1.0), run(11, 0.6, 1.0)],
        "fid": [run(13, 0.9, 2.0), run(12, 0.6, 2.0), run(14, 0.66, 2.0)],
    }
    result = report(runs, {"clip_score": ["clip_score"], "fid": ["clip_score", "fid"]})["variants"]
    assert result["fid"]["seconds_per_image"] == statistics.median([0.9, 0.6, 0.66]) == 0.66
    assert abs(result["fid"]["added_seconds_per_image"] - (0.66 - 0.6)) < 1e-12
    assert abs(result["fid"]["ratio_seconds_per_image"] - 0.66 / 0.6) < 1e-12
    assert result["fid"]["ratio_wall"] == 13 / 11 and result["fid"]["seconds_per_image_range"] == [0.6, 0.9]
    assert result["clip_score"]["added_seconds_per_image"] == 0 and result["fid"]["load"] == 2.0
    assert result["fid"]["added_cpu_seconds_per_image"] == (6.5 - 5.5) / 4  # median CPU 13/2 against 11/2
