"""Sparse dictionaries of a layer: a TopK sparse autoencoder trained on the stored rows, and what each feature is.

``weights``: the saved dictionary and its documented forward (numpy); ``training``: the streamed TopK training
(torch); ``features``: the second streamed pass that measures quality and describes every feature.
"""

from atlas.dictionary.features import FeatureStats, measure_features
from atlas.dictionary.training import TrainingCurve, default_features, default_k, train_dictionary
from atlas.dictionary.weights import FORWARD, DictionaryWeights, encode, own_feature_ranks, reconstruct

__all__ = [
    "FORWARD",
    "DictionaryWeights",
    "FeatureStats",
    "TrainingCurve",
    "default_features",
    "default_k",
    "encode",
    "measure_features",
    "own_feature_ranks",
    "reconstruct",
    "train_dictionary",
]
