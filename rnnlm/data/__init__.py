"""Data: corpus file -> jieba words -> token ids (cached) -> vocabulary and splits -> (x, y) batches.

    tokenize.py   reading a file as UTF-8 in blocks and cutting it into words with jieba, on every core
    pool.py       how many processes run jieba, and their pool, which fails fast when a worker dies
    words.py      words back as text (spaces where the script has them)
    corpus.py     Corpus and load_corpus (with the on-disk token cache), the default corpus
    vocab.py      Vocab (words by frequency, <pad> and <unk> first), counted on the training split (train_vocab),
                  and split_corpus (train / valid / test)
    batching.py   StreamBatches and WindowBatches: (B, T) windows as tensor views, resumable
"""
from rnnlm.data.batching import BATCHINGS, StreamBatches, WindowBatches, make_batches, max_batch_size
from rnnlm.data.corpus import Corpus, cache_root, default_corpus_path, file_hash, load_corpus
from rnnlm.data.tokenize import ENCODING_ERRORS, TokenizerSettings, tokenize_text
from rnnlm.data.vocab import (PAD, SPLIT_FRACTIONS, SPLITS, UNK, Vocab, oov_rate, split_bounds, split_corpus,
                              train_counts, train_vocab)

__all__ = ["BATCHINGS", "Corpus", "ENCODING_ERRORS", "PAD", "SPLITS", "SPLIT_FRACTIONS", "StreamBatches",
           "TokenizerSettings", "UNK", "Vocab", "WindowBatches", "cache_root", "default_corpus_path", "file_hash",
           "load_corpus", "make_batches", "max_batch_size", "oov_rate", "split_bounds", "split_corpus", "tokenize_text",
           "train_counts", "train_vocab"]
