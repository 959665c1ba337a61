import json

import pytest

from mindformer_gf.config import PRESETS, ConfigError, GeneformerConfig

# Parameter counts of the released models (geneformer-reference.md), BertForMaskedLM without the tied decoder.
PUBLISHED_PARAMS = {
    "Geneformer-V1-10M": 10.3e6,
    "gf-12L-30M-i2048": 39.6e6,
    "gf-12L-95M-i4096": 38.0e6,
    "gf-20L-95M-i4096": 151e6,
    "Geneformer-V2-104M": 104e6,
    "Geneformer-V2-316M": 316e6,
}


def test_reads_every_field_of_the_released_v1_config(v1_config_path):
    config = GeneformerConfig.from_json_file(v1_config_path)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (256, 6, 4)
    assert (config.intermediate_size, config.max_position_embeddings, config.vocab_size) == (512, 2048, 25426)
    assert config.hidden_act == "relu" and config.layer_norm_eps == 1e-12 and config.head_dim == 64
    assert config.attention_probs_dropout_prob == 0.02 and config.pad_token_id == 0
    assert config.architecture == "BertForMaskedLM"
    assert config.extra["transformers_version"] == "4.6.0"


@pytest.mark.parametrize(
    "name",
    [
        "config_gf-6L-30M-i2048.json",
        "config_gf-12L-30M-i2048.json",
        "config_gf-6L-30M-i2048_CellClassifier_cardiomyopathies.json",
    ],
)
def test_config_round_trips_unchanged(data_dir, tmp_path, name):
    source = json.loads((data_dir / "geneformer-v1" / name).read_text())
    config = GeneformerConfig.from_dict(source)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == source
    assert not [p for p in tmp_path.iterdir() if p.name != "config.json"], "temporary file left behind"


def test_classifier_config_labels(data_dir):
    path = data_dir / "geneformer-v1" / "config_gf-6L-30M-i2048_CellClassifier_cardiomyopathies.json"
    config = GeneformerConfig.from_json_file(path)
    assert config.num_labels == 3 and config.id2label[2] == "LABEL_2"
    assert config.architecture == "BertForSequenceClassification"


def test_v1_preset_equals_released_config(v1_config_path):
    released = GeneformerConfig.from_json_file(v1_config_path)
    preset = GeneformerConfig.from_preset("gf-6L-30M-i2048")
    for field in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "hidden_act",
        "layer_norm_eps",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "type_vocab_size",
        "pad_token_id",
    ):
        assert getattr(preset, field) == getattr(released, field), field


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_counts_match_the_published_sizes(name):
    count = GeneformerConfig.from_preset(name).num_parameters("BertForMaskedLM")
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


def test_parameter_count_by_hand_for_a_tiny_bert():
    config = GeneformerConfig(
        vocab_size=10,
        hidden_size=4,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=6,
    )
    embeddings = 10 * 4 + 6 * 4 + 2 * 4 + 2 * 4
    layer = 4 * (4 * 4 + 4) + (4 * 8 + 8) + (8 * 4 + 4) + 2 * (2 * 4)
    mlm_head = 4 * 4 + 4 + 2 * 4 + 10
    assert config.num_parameters("BertForMaskedLM") == embeddings + layer + mlm_head
    assert config.num_parameters("BertModel") == embeddings + layer + 4 * 4 + 4
    assert config.num_parameters("BertForTokenClassification") == embeddings + layer + 4 * 2 + 2


@pytest.mark.parametrize(
    "change, field",
    [
        ({"hidden_act": "swiglu"}, "hidden_act"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"hidden_size": 250}, "num_attention_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"model_type": "roberta"}, "model_type"),
        ({"architectures": ["BertForPreTraining"]}, "architectures"),
        ({"attention_impl": "cuda"}, "attention_impl"),
        ({"pad_token_id": 30000}, "pad_token_id"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(v1_config_path, change, field):
    data = json.loads(v1_config_path.read_text())
    data.update(change)
    with pytest.raises(ConfigError) as info:
        GeneformerConfig.from_dict(data)
    assert info.value.field == field
    assert field in str(info.value)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match="Geneformer-V2-104M"):
        GeneformerConfig.from_preset("Geneformer-V3")


def test_presets_cover_the_released_models():
    assert set(PUBLISHED_PARAMS) <= set(PRESETS)
