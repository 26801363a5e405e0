"""FLOPs per image of each `test` metric's published network, counted from its architecture (no weights needed).

    python -m ldm_lightning.lab.metric_flops

Each network is built from its published architecture in transformers' classes (the classes the metrics
load) and run once under `anatomy.count_flops` (2 FLOPs per multiply-accumulate; norms, activations and
softmax not counted): on meta tensors, except the detector, which runs on CPU with random weights. Inputs
are what each metric's processor makes: 224² for the CLIPs and DINOv2, 77 text tokens, the detector at
`--detector-size`. The FID Inception is TorchScript with no architecture to rebuild here; its figure is
the published one (5.7 GMACs at 299², timm's model card for inception_v3; 11.47 GFLOPs in OpenVINO's
model table), so it is quoted, not counted.

The architectures: CLIP ViT-L/14 (OpenAI; CLIPScore, aesthetic, CMMD, FD-CLIP, GenEval's colour classifier):
vision width 1024, 24 layers, MLP 4096, patch 14; text width 768, 12 layers. OpenCLIP ViT-H-14 (PickScore,
HPS v2): vision width 1280, 32 layers, MLP 5120; text width 1024, 24 layers, 16 heads; embedding 1024.
DINOv2 ViT-L/14: width 1024, 24 layers, MLP 4096, patch 14. Mask2Former Swin-S (GenEval's detector): Swin
embedding 96, depths 2-2-18-2, heads 3-6-12-24, window 7; transformers' defaults for the rest (100 queries,
6 pixel-decoder layers, 10 decoder layers, width 256).
"""

import argparse
import json

import torch

from ldm_lightning.lab.anatomy import count_flops, count_params

INCEPTION_GFLOPS = 11.47  # published (see the module docstring), at 299²
TEXT_TOKENS = 77


def clip_config(vision: tuple[int, int, int, int], text: tuple[int, int, int, int], embed: int):
    """A transformers CLIPConfig from (width, layers, heads, mlp) of each tower, ViT patch 14 at 224²."""
    from transformers import CLIPConfig

    def tower(spec: tuple[int, int, int, int]) -> dict:
        width, layers, heads, mlp = spec
        return {
            "hidden_size": width,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "intermediate_size": mlp,
        }

    return CLIPConfig(
        vision_config={**tower(vision), "image_size": 224, "patch_size": 14},
        text_config={**tower(text), "max_position_embeddings": TEXT_TOKENS},
        projection_dim=embed,
    )


def clip_flops(config) -> dict[str, float]:
    """GFLOPs of one image through the vision tower and of one 77-token prompt through the text tower."""
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(config).eval()
        pixels = torch.zeros(1, 3, 224, 224)
        ids = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)
    image = count_flops(lambda: model.get_image_features(pixel_values=pixels))
    text = count_flops(lambda: model.get_text_features(input_ids=ids))
    return {"image": image / 1e9, "text": text / 1e9, "params_m": count_params(model) / 1e6}


def dinov2_flops() -> dict[str, float]:
    """GFLOPs of one 224² image through DINOv2 ViT-L/14."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=224, patch_size=14)
    with torch.device("meta"):
        model = Dinov2Model(config).eval()
        pixels = torch.zeros(1, 3, 224, 224)
    return {"image": count_flops(lambda: model(pixel_values=pixels)) / 1e9, "params_m": count_params(model) / 1e6}


def mask2former_flops(size: int) -> dict[str, float]:
    """GFLOPs of one size² image through Mask2Former Swin-S (COCO instance: 80 classes, 100 queries)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(
        embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=80, use_pretrained_backbone=False)
    # On CPU tensors with random weights: the pixel decoder's deformable attention builds CPU tensors of its
    # own, which meta tensors cannot meet. Its sampling (`grid_sample`) is not counted.
    model = Mask2FormerForUniversalSegmentation(config).eval()
    pixels = torch.zeros(1, 3, size, size)
    return {"image": count_flops(lambda: model(pixel_values=pixels)) / 1e9, "params_m": count_params(model) / 1e6}


def per_metric(detector_size: int) -> dict[str, dict]:
    """GFLOPs each metric adds per image, with what it is made of."""
    vit_l = clip_flops(clip_config((1024, 24, 16, 4096), (768, 12, 12, 3072), 768))
    vit_h = clip_flops(clip_config((1280, 32, 16, 5120), (1024, 24, 16, 4096), 1024))
    dino = dinov2_flops()
    detector = mask2former_flops(detector_size)
    both = lambda c: c["image"] + c["text"]  # noqa: E731
    return {
        "clip_score": {"gflops": both(vit_l), "counted": "CLIP ViT-L/14 image + text"},
        "pick_score": {"gflops": both(vit_h), "counted": "ViT-H-14 image + text"},
        "hpsv2": {"gflops": both(vit_h), "counted": "ViT-H-14 image + text"},
        "aesthetic": {"gflops": vit_l["image"], "counted": "CLIP ViT-L/14 image (the MLP head is < 0.01)"},
        "geneval": {
            "gflops": detector["image"],
            "counted": f"Mask2Former Swin-S at {detector_size}², plus {vit_l['image']:.0f} per coloured object crop",
        },
        "fid": {"gflops": INCEPTION_GFLOPS, "counted": "Inception-v3 at 299², published"},
        "kid": {"gflops": INCEPTION_GFLOPS, "counted": "Inception-v3 at 299², published"},
        "cmmd": {"gflops": vit_l["image"], "counted": "CLIP ViT-L/14 image"},
        "fd_clip": {"gflops": vit_l["image"], "counted": "CLIP ViT-L/14 image"},
        "fd_dinov2": {"gflops": dino["image"], "counted": "DINOv2 ViT-L/14 at 224²"},
        "parts": {"vit_l_14": vit_l, "vit_h_14": vit_h, "dinov2_l_14": dino, "mask2former_swin_s": detector},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="FLOPs per image of each metric's published network (meta device).")
    parser.add_argument("--detector-size", type=int, default=800, help="GenEval detector input side (mmdet: 800)")
    args = parser.parse_args(argv)
    result = per_metric(args.detector_size)
    for name, entry in result.items():
        if name != "parts":
            print(f"| {name} | {entry['gflops']:.1f} | {entry['counted']} |")
    print(json.dumps(result["parts"], indent=1))
    return result


if __name__ == "__main__":
    main()
