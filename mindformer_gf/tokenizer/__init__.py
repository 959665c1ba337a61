"""Tokenizer: rank value encoding of .h5ad/.loom count files into Geneformer datasets.

`tokenize("cells.h5ad", "out", "cells")` writes out/cells.dataset with the shipped V1 dictionaries. V2 needs the
Geneformer repository's files: `tokenize(..., model_version="V2", token_dictionary_file=...,
gene_median_file=..., gene_mapping_file=...)` with token_dictionary_gc104M.pkl, gene_median_dictionary_gc104M.pkl and
ensembl_mapping_dict_gc104M.pkl.
"""

from mindformer_gf.tokenizer.dictionaries import (
    KNOWN_VOCAB_SIZES,
    DictionaryFormatError,
    GeneDictionaries,
    load_gene_dictionaries,
    read_dictionary_file,
    token_dictionary_sha256,
)
from mindformer_gf.tokenizer.encode import RankedCells, add_special_tokens, rank_value_encode, truncate_cells
from mindformer_gf.tokenizer.readers import TokenizerInputError, TokenizerWarning, open_cell_file
from mindformer_gf.tokenizer.tokenizer import (
    TIE_BREAK_RULE,
    TokenizeResult,
    TranscriptomeTokenizer,
    tokenize,
)
from mindformer_gf.tokenizer.writer import (
    DictionaryMismatchError,
    check_dataset_matches_vocab,
    read_dictionary_metadata,
    token_dictionary_for,
)

__all__ = [
    "KNOWN_VOCAB_SIZES",
    "TIE_BREAK_RULE",
    "DictionaryFormatError",
    "DictionaryMismatchError",
    "GeneDictionaries",
    "RankedCells",
    "TokenizeResult",
    "TokenizerInputError",
    "TokenizerWarning",
    "TranscriptomeTokenizer",
    "add_special_tokens",
    "check_dataset_matches_vocab",
    "load_gene_dictionaries",
    "open_cell_file",
    "rank_value_encode",
    "read_dictionary_file",
    "read_dictionary_metadata",
    "token_dictionary_for",
    "token_dictionary_sha256",
    "tokenize",
    "truncate_cells",
]
