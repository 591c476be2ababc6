"""Retrieval evaluation shared by every method: exact search, metrics, DDP-exact gathering, outputs."""
from callbacks.evaluate import evaluate_retrieval
from callbacks.prediction_writer import EmbeddingWriter
from callbacks.retrieval_evaluation import RetrievalEvaluation
from callbacks.search import exact_topk

__all__ = ["evaluate_retrieval", "exact_topk", "EmbeddingWriter", "RetrievalEvaluation"]
