"""The tokenized dataset on disk: a Hugging Face `datasets` directory, as `Dataset.save_to_disk` lays it out.

Workers write Arrow shards (Arrow IPC streams, as `datasets` writes them) into a temporary directory beside the
output; at the end the shards are named `data-XXXXX-of-NNNNN.arrow`, `state.json` and `dataset_info.json` are written
as save_to_disk writes them, and the directory is renamed to `{prefix}.dataset`. Writing the layout directly (instead
of building a Dataset and calling save_to_disk) saves a second full copy of the data. `save_dataset` writes any
`datasets.Dataset` (a task's output) the same way.

Readable by every `datasets` from 2.12 on (the reference allows any `datasets>=2.12`): the features are recorded (in
`dataset_info.json` and in each shard's schema metadata) in the form all of them read. `datasets` 4 and later would
record a list column as `List`, which 3.x and older refuse ("Feature type 'List' not found"); we write the older
`Sequence`, which 4 and later still read as `List`. tests/tokenizer/test_datasets_compat.py opens our output with
`datasets` 3.6 and 2.12 in a virtual environment of their own.

`dataset_info.json`'s `description` holds a JSON record of the dictionary that produced the dataset (name, version,
vocabulary size, token dictionary hash, special tokens); `check_dataset_matches_vocab` uses it to refuse a V1 dataset
for a V2 model with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mindformer_gf.io import publish_directory, staging_directory
from mindformer_gf.tokenizer.dictionaries import (
    KNOWN_VOCAB_SIZES,
    DictionaryMismatchError,
    dataset_token_dictionary,
    describe_vocab_size,
)
from mindformer_gf.tokenizer.encode import RankedCells

METADATA_FORMAT = "mindformer_gf.tokenized_dataset"
METADATA_FORMAT_VERSION = 1
RESERVED_COLUMNS = ("input_ids", "length")
MAX_SHARD_BYTES = 500 * 1024 * 1024  # save_to_disk's default shard size


def dataset_schema(attribute_types: dict[str, pa.DataType]) -> pa.Schema:
    fields = [pa.field("input_ids", pa.list_(pa.int32())), pa.field("length", pa.int64())]
    fields += [pa.field(name, dtype) for name, dtype in attribute_types.items()]
    return pa.schema(fields)


def cells_table(cells: RankedCells, attributes: dict[str, pa.Array], schema: pa.Schema) -> pa.Table:
    """An Arrow table of token lists (zero-copy from the CSR-like arrays) and cell attributes."""
    input_ids = pa.ListArray.from_arrays(pa.array(cells.offsets.astype(np.int32)), pa.array(cells.tokens))
    columns = [input_ids, pa.array(cells.lengths.astype(np.int64))] + [attributes[f.name] for f in list(schema)[2:]]
    return pa.Table.from_arrays(columns, schema=schema)


def portable_features(schema: pa.Schema) -> dict[str, Any]:
    """The `datasets` features of `schema` as a dictionary every `datasets` since 2.12 reads: list columns as
    `Sequence` (a list of structs as `[{...}]`), never the `List` of datasets 4 and later."""
    from datasets import Features

    return _legacy_feature(Features.from_arrow_schema(pa.schema(list(schema))).to_dict())


def _legacy_feature(feature: Any) -> Any:
    if isinstance(feature, list):
        return [_legacy_feature(item) for item in feature]
    if not isinstance(feature, dict):
        return feature
    if feature.get("_type") != "List":
        return {key: _legacy_feature(value) for key, value in feature.items()}
    inner = _legacy_feature(feature["feature"])
    length = feature.get("length", -1)
    if isinstance(inner, dict) and "_type" not in inner and length == -1:
        return [inner]  # a list of structs; Sequence({...}) would mean a struct of lists to the older readers
    legacy = {"feature": inner, "_type": "Sequence"}
    if length != -1:
        legacy["length"] = length
    return legacy


def portable_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with the `huggingface` metadata `datasets` reads its features from, in the portable form."""
    features = json.dumps({"info": {"features": portable_features(schema)}})
    return pa.schema(list(schema), metadata={"huggingface": features})


class ShardWriter:
    """Appends tables to Arrow shards `{directory}/{stem}-NNNNN.arrow`, starting a new shard every ~500 MB."""

    def __init__(self, directory: Path, stem: str, schema: pa.Schema, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
        self.directory = directory
        self.stem = stem
        self.schema = portable_schema(schema)
        self.max_shard_bytes = max_shard_bytes
        self.shards: list[tuple[str, int]] = []  # (file name, rows)
        self._writer: Any = None
        self._bytes = 0
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is not None and self._bytes >= self.max_shard_bytes:
            self._close_shard()
        if self._writer is None:
            name = f"{self.stem}-{len(self.shards):05d}.arrow"
            self._writer = pa.ipc.new_stream(str(self.directory / name), self.schema)
            self.shards.append((name, 0))
        self._writer.write_table(table.replace_schema_metadata(self.schema.metadata))
        self._bytes += table.nbytes
        self._rows += table.num_rows

    def write_empty(self) -> None:
        """One shard of no rows (a dataset of no cells still has a schema)."""
        self._writer = pa.ipc.new_stream(str(self.directory / f"{self.stem}-00000.arrow"), self.schema)
        self.shards.append((f"{self.stem}-00000.arrow", 0))

    def _close_shard(self) -> None:
        self._writer.close()
        name, _ = self.shards[-1]
        self.shards[-1] = (name, self._rows)
        self._writer, self._bytes, self._rows = None, 0, 0

    def close(self) -> list[tuple[str, int]]:
        if self._writer is not None:
            self._close_shard()
        return self.shards


def publish_dataset(
    temporary_dir: Path,
    shard_names: list[str],
    schema: pa.Schema,
    metadata: dict[str, Any] | str,
    final_dir: Path,
    overwrite: bool,
) -> Path:
    """Lay the shards out as save_to_disk does, then rename `temporary_dir` to `final_dir`. `metadata` becomes the
    info's description (a dictionary record as JSON)."""
    n_shards = len(shard_names)
    final_names = [f"data-{i:05d}-of-{n_shards:05d}.arrow" for i in range(n_shards)]
    for name, final_name in zip(shard_names, final_names, strict=True):
        os.replace(temporary_dir / name, temporary_dir / final_name)
    description = metadata if isinstance(metadata, str) else json.dumps(metadata, sort_keys=True)
    fingerprint = hashlib.sha256(
        (description + "".join(str((temporary_dir / n).stat().st_size) for n in final_names)).encode()
    ).hexdigest()[:16]
    state = {
        "_data_files": [{"filename": name} for name in final_names],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    with open(temporary_dir / "state.json", "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2, sort_keys=True)
    # save_to_disk's DatasetInfo without the fields at their defaults; every field here exists since datasets 2.x
    info = {"citation": "", "description": description, "features": portable_features(schema), "homepage": ""}
    info["license"] = ""
    with open(temporary_dir / "dataset_info.json", "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    return publish_directory(temporary_dir, final_dir, overwrite)


def save_dataset(dataset: Any, path: str | os.PathLike, overwrite: bool = False, rows_per_batch: int = 10_000) -> Path:
    """Write a `datasets.Dataset` (its selected rows, e.g. after `select`) to the directory `path` in the layout of
    `save_to_disk`, readable by every `datasets` since 2.12 (see the module's doc), keeping its description (the
    tokenizer's dictionary record). Written under a temporary name, then renamed."""
    final_dir = Path(path)
    if final_dir.exists() and not overwrite:
        raise FileExistsError(f"{final_dir} already exists; pass overwrite=True to replace it")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    rows = dataset.with_format("arrow")
    schema = pa.schema(list(dataset.features.arrow_schema))
    temporary_dir = staging_directory(final_dir)
    try:
        writer = ShardWriter(temporary_dir, "shard", schema)
        for start in range(0, len(dataset), rows_per_batch):
            writer.write(rows[start : start + rows_per_batch].cast(schema))
        if len(dataset) == 0:
            writer.write_empty()
        shard_names = [name for name, _ in writer.close()]
        description = getattr(dataset.info, "description", "") or ""
        return publish_dataset(temporary_dir, shard_names, schema, description, final_dir, overwrite)
    except BaseException:
        shutil.rmtree(temporary_dir, ignore_errors=True)
        raise


def read_dictionary_metadata(dataset_or_dir: Any) -> dict[str, Any] | None:
    """The tokenizer record of a dataset (a `datasets.Dataset` or its directory); None if it has none.

    The record: {"format", "format_version", "dictionary": {"name", "model_version", "vocab_size",
    "token_dictionary_sha256", "special_tokens"}, "model_input_size", "special_token", "tie_break", "inputs", ...}.
    """
    if isinstance(dataset_or_dir, (str, os.PathLike)):
        info_file = Path(dataset_or_dir) / "dataset_info.json"
        if not info_file.is_file():
            raise FileNotFoundError(f"{dataset_or_dir}: not a saved dataset directory (no dataset_info.json)")
        with open(info_file, encoding="utf-8") as handle:
            description = json.load(handle).get("description", "")
    else:
        info = getattr(dataset_or_dir, "info", None)
        description = getattr(info, "description", "") or ""
    try:
        record = json.loads(description)
    except (TypeError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != METADATA_FORMAT:
        return None
    return record


def token_dictionary_for(dataset_or_dir: Any, token_dictionary_file: str | os.PathLike | None = None) -> dict[str, int]:
    """The token dictionary that tokenized a dataset (a `datasets.Dataset` or its directory): the shipped V1 one
    unless a file is given; checked against the dataset's record (its hash) when the dataset has one."""
    return dataset_token_dictionary(read_dictionary_metadata(dataset_or_dir), token_dictionary_file)


def _max_token_id(dataset_or_dir: Any) -> int:
    import pyarrow.compute as pc

    if isinstance(dataset_or_dir, (str, os.PathLike)):
        from datasets import load_from_disk

        dataset_or_dir = load_from_disk(str(dataset_or_dir))
    column = dataset_or_dir.data.column("input_ids")
    maximum = pc.max(pc.list_flatten(column)).as_py()
    return -1 if maximum is None else int(maximum)


def check_dataset_matches_vocab(dataset_or_dir: Any, vocab_size: int) -> None:
    """Raise DictionaryMismatchError if the dataset was not tokenized for a model with `vocab_size` tokens.

    Uses the dictionary record the tokenizer stores; for datasets without one (e.g. made by the reference package),
    checks that every token id is below `vocab_size`.
    """
    vocab_size = int(vocab_size)
    record = read_dictionary_metadata(dataset_or_dir)
    model = describe_vocab_size(vocab_size)
    if record is not None:
        dictionary = record["dictionary"]
        data_vocab = int(dictionary["vocab_size"])
        if data_vocab != vocab_size:
            data = f"{dictionary.get('model_version', '?')} dictionary '{dictionary.get('name')}' ({data_vocab} tokens)"
            fix = (
                f"re-tokenize with model_version='{KNOWN_VOCAB_SIZES[vocab_size]}' (gf tokenize --model-version "
                f"{KNOWN_VOCAB_SIZES[vocab_size]}) and that version's dictionaries"
                if vocab_size in KNOWN_VOCAB_SIZES
                else "re-tokenize with the dictionary of this model"
            )
            raise DictionaryMismatchError(
                f"the dataset was tokenized with the {data}, but the model's vocabulary is {model}: {fix}, or use a "
                f"model of the dataset's version."
            )
        return
    maximum = _max_token_id(dataset_or_dir)
    if maximum >= vocab_size:
        guess = next((v for size, v in KNOWN_VOCAB_SIZES.items() if maximum < size and size != vocab_size), None)
        likely = f" (likely tokenized for {guess})" if guess else ""
        raise DictionaryMismatchError(
            f"the dataset holds token id {maximum}, beyond the model's vocabulary of {model}{likely}: tokenize the "
            "cells with the dictionary of this model."
        )
