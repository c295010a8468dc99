"""Tiny randomly initialised models and encoded data for exact tests."""

import torch
import transformers as T

from mape.method.models import Encoded, TaskModel


def tiny_bert(num_labels: int = 3, seed: int = 0, arch: str = "bert", dtype=torch.float32) -> TaskModel:
    torch.manual_seed(seed)
    common = dict(vocab_size=50, max_position_embeddings=40, num_labels=num_labels)
    if arch == "bert":
        model = T.BertForSequenceClassification(T.BertConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24, **common))
    elif arch == "roberta":
        model = T.RobertaForSequenceClassification(T.RobertaConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24, pad_token_id=1, **common))
    elif arch == "distilbert":
        model = T.DistilBertForSequenceClassification(T.DistilBertConfig(
            dim=16, n_layers=2, n_heads=4, hidden_dim=24, **common))
    elif arch == "vit":
        model = T.ViTForImageClassification(T.ViTConfig(
            image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=24, num_labels=num_labels))
    else:
        raise ValueError(arch)
    model = model.to(dtype).eval()
    modality = "image" if arch == "vit" else "text"
    return TaskModel(model, modality, [f"c{i}" for i in range(num_labels)])


def tiny_data(n: int = 24, num_labels: int = 3, seed: int = 1, image: bool = False, dtype=torch.float32) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_labels, (n,), generator=g)
    if image:
        return Encoded({"pixel_values": torch.randn(n, 1, 8, 8, generator=g).to(dtype)}, labels)
    ids = torch.randint(3, 50, (n, 12), generator=g)
    mask = torch.ones(n, 12, dtype=torch.long)
    mask[n // 2:, 9:] = 0  # some padding
    return Encoded({"input_ids": ids, "attention_mask": mask}, labels)
