"""Retrieval evaluation shared by every method: exact search, metrics, DDP-exact gathering, outputs, figures."""
from callbacks.attention_maps import AttentionMapFigure
from callbacks.evaluate import evaluate_retrieval
from callbacks.explanation import ExplanationEvaluation
from callbacks.last_checkpoint import LastCheckpoint
from callbacks.prediction_writer import EmbeddingWriter
from callbacks.retrieval_evaluation import RetrievalEvaluation
from callbacks.retrieval_grid import RetrievalGrid
from callbacks.search import exact_topk

__all__ = ["AttentionMapFigure", "evaluate_retrieval", "exact_topk", "EmbeddingWriter", "ExplanationEvaluation",
           "LastCheckpoint",
           "RetrievalEvaluation", "RetrievalGrid"]
