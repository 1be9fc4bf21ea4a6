"""What a distillation loss reads: the student's and the teacher's outputs for one batch.

``StudentOutput`` carries what the student's forward produced (with gradients); ``TeacherOutput``
what the frozen teacher produced (without gradients) plus the *critic*: the teacher's classifier,
frozen but kept in the graph, through which cross-network logits send gradients back to the
student. Losses read these two objects and the ``Batch``; they never reach into a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = ["StudentOutput", "TeacherOutput", "DistillInputError"]


class DistillInputError(ValueError):
    """A loss got outputs it cannot use (a missing field, mismatched shapes); the message says which."""


def _vector(embedding: Tensor | None, pooled: Tensor | None, who: str) -> Tensor:
    if embedding is not None:
        return embedding
    if pooled is not None:
        return pooled
    raise DistillInputError(f"{who} output has neither an embedding nor a pooled feature")


@dataclass
class StudentOutput:
    """The student's outputs for one batch (all with gradients).

    embedding: face embedding [N, D_s] (faces); feature_map: last map [N, C_s, h, w];
    logits: classification logits [N, K], or for faces the student's own head logits without margin
    (s * cos over the classes ``TeacherOutput.centres`` names), needed only by ``kd`` in its default
    form; pooled: GAP of the feature map [N, C_s] (classification).
    """

    embedding: Tensor | None = None
    feature_map: Tensor | None = None
    logits: Tensor | None = None
    pooled: Tensor | None = None

    @classmethod
    def from_model(cls, out: Any, logits: Tensor | None = None) -> "StudentOutput":
        """From a backbone's ``model(x, return_features=True)`` (FaceOutput or ClassifierOutput);
        ``logits`` adds a face student's own head logits."""
        if hasattr(out, "embedding"):
            return cls(embedding=out.embedding, feature_map=out.feature_map, logits=logits)
        if hasattr(out, "pooled"):
            return cls(feature_map=out.feature_map, logits=out.logits, pooled=out.pooled)
        raise DistillInputError(f"expected a FaceOutput or ClassifierOutput (model(x, return_features=True)), "
                                f"got {type(out).__name__}")

    @property
    def vector(self) -> Tensor:
        """The embedding (faces) or the pooled feature (classification)."""
        return _vector(self.embedding, self.pooled, "student")

    def require(self, name: str, loss: str) -> Tensor:
        """Field ``name``, or a DistillInputError saying that ``loss`` needs it."""
        value = getattr(self, name)
        if value is None:
            raise DistillInputError(f"loss '{loss}' needs the student's {name}, which this StudentOutput lacks")
        return value


@dataclass
class TeacherOutput:
    """The frozen teacher's outputs for one batch (no gradients) and its critic.

    embedding [N, D_t] (faces, from the cache or the online teacher); feature_map/pooled/logits
    (classification teachers); critic: the teacher's classifier as a module
    ``critic(features, centres=None) -> logits`` (frozen, not detached); centres: optional 1-D
    tensor of class ids the face logits are restricted to (Partial FC's sampled centres).
    """

    embedding: Tensor | None = None
    feature_map: Tensor | None = None
    pooled: Tensor | None = None
    logits: Tensor | None = None
    critic: nn.Module | None = None
    centres: Tensor | None = None
    _memo: dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def vector(self) -> Tensor:
        """The embedding (faces) or the pooled feature (classification)."""
        return _vector(self.embedding, self.pooled, "teacher")

    def require(self, name: str, loss: str) -> Any:
        """Field ``name``, or a DistillInputError saying that ``loss`` needs it."""
        value = getattr(self, name)
        if value is None:
            raise DistillInputError(f"loss '{loss}' needs the teacher's {name}, which this TeacherOutput lacks")
        return value

    def teacher_logits(self, loss: str) -> Tensor:
        """The teacher's logits over ``centres`` (computed once through the critic when not given)."""
        if self.logits is not None and self.centres is None:
            return self.logits
        if "logits" not in self._memo:
            critic = self.require("critic", loss)
            self._memo["logits"] = critic(self.vector, self.centres).detach()
        return self._memo["logits"]

    def logit_mse(self, features: Tensor, loss: str, rows: Tensor | None = None) -> Tensor:
        """MSE of cross-network logits ``critic(features)`` against the teacher's logits of the
        same rows (``rows`` of the batch, all when None). A critic with ``matching_mse`` (face
        centres) scores all its classes in closed form, whatever ``centres`` says; others go
        through the logits over ``centres``."""
        critic = self.require("critic", loss)
        if hasattr(critic, "matching_mse"):
            target = self.vector if rows is None else self.vector.index_select(0, rows)
            return critic.matching_mse(features, target)
        z_hat = critic(features, self.centres).float()
        z_t = self.teacher_logits(loss)
        z_t = z_t if rows is None else z_t.index_select(0, rows)
        if z_hat.shape != z_t.shape:
            raise DistillInputError(f"{loss} logits: shapes differ, {list(z_hat.shape)} vs {list(z_t.shape)}")
        return (z_hat - z_t.float()).pow(2).mean()

    def cross_logits(self, features: Tensor, loss: str) -> Tensor:
        """Cross-network logits: the critic applied to (connected) student ``features``, gradients kept."""
        critic = self.require("critic", loss)
        return critic(features, self.centres)
