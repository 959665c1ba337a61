"""Inference over a dataset: length-sorted batch plans (`batches`), a model run over them in input order
(`batches.run_forward`), the tokenized dataset opened for a model (`datasets`), and the msrun protocol that shares
one process's batch plan among the ranks and merges their outputs bit for bit (`sharded`)."""
