"""The workspace's DuckDB schema, versioned.

One DuckDB file holds everything a job computes and the app shows. Embedding vectors live in one table per
embedder (``embeddings_<n>``) because DuckDB's fixed-size ``FLOAT[d]`` arrays need the dimension in the
table's type; ``embedding_sets`` maps an embedder to its table. Job state and progress live in a SQLite
file beside the DuckDB file (see ``core.store.jobs``): frequent small writes do not belong in DuckDB.
"""

from __future__ import annotations

from core.constants import ANNOTATION_KINDS, METADATA_KINDS, SELECTION_STATUSES, SPLITS

SCHEMA_VERSION = 7
#: Older versions this one opens by adding what they lack: new tables (the DDL), and these columns (and
#: DCD's neighbours per failure image, once called ``k``, by their name). Version 5 added image metadata
#: (``metadata_columns``, ``image_metadata``), version 6 failures of a confusion cell or picked images
#: (``failures``, ``failure_members``): tables only. Version 7 allows the ``uploaded`` split and failure kind:
#: DuckDB cannot change a CHECK constraint in place, so ``images`` and ``failures`` are copied into tables
#: made with the new constraint (every row kept, ids unchanged).
MIGRATES_FROM = (1, 2, 3, 4, 5, 6)


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


#: The failure kinds stored in ``failures`` (core.dcd.failure; error_sample and slices are stored elsewhere).
STORED_FAILURE_KINDS = ("cell", "picked", "uploaded")

# label: the label the project trusts for that split (train as given, evaluation sets' truth);
# weak_label: the noisy label of pool images; group_name / true_label: ground truth when known,
# used only to measure quality, never by the methods.
IMAGES_DDL = f"""
CREATE TABLE IF NOT EXISTS images (
    image_id BIGINT PRIMARY KEY,
    path VARCHAR NOT NULL UNIQUE,
    split VARCHAR NOT NULL CHECK (split IN ({_one_of(SPLITS)})),
    label INTEGER,
    weak_label INTEGER,
    group_name VARCHAR,
    true_label INTEGER,
    width INTEGER,
    height INTEGER,
    source VARCHAR,
    ingested_at TIMESTAMP DEFAULT current_timestamp
);
"""

# A failure of a confusion cell, of picked images or of uploaded images (core.dcd.failure): its images split,
# seeded, into the query part and the held-out part (eval set failure:<failure_id>), as a slice target's are
# (uploaded images: all in the query part, no held-out part). source: where it came from (JSON); source_key:
# its hash, one failure per source.
FAILURES_DDL = f"""
CREATE TABLE IF NOT EXISTS failures (
    failure_id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL CHECK (kind IN ({_one_of(STORED_FAILURE_KINDS)})),
    name VARCHAR NOT NULL,
    source JSON NOT NULL,
    source_key VARCHAR NOT NULL UNIQUE,
    seed INTEGER NOT NULL,
    heldout_share DOUBLE NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp
);
"""


def _rebuilt(table: str, ddl: str) -> tuple[str, ...]:
    """Statements that copy ``table`` into a new one made by ``ddl`` (a changed CHECK constraint), rows kept."""
    return (f"ALTER TABLE {table} RENAME TO {table}_before_v7", ddl,
            f"INSERT INTO {table} BY NAME SELECT * FROM {table}_before_v7", f"DROP TABLE {table}_before_v7")


#: (the version that made the change, the statement): run on a workspace of an older version only.
MIGRATIONS = (
    (3, "ALTER TABLE selection_items ADD COLUMN IF NOT EXISTS kind VARCHAR DEFAULT 'retrieved'"),
    (3, "ALTER TABLE selection_items ADD COLUMN IF NOT EXISTS confidence FLOAT"),
    (4, "ALTER TABLE selections RENAME COLUMN k TO neighbours"),
    *((7, statement) for statement in _rebuilt("images", IMAGES_DDL) + _rebuilt("failures", FAILURES_DDL)),
)


DDL = f"""
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS classes (
    class_id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL UNIQUE
);

{IMAGES_DDL}
-- Image metadata (core.data.metadata): a manifest's columns beyond the built-in ones (site, camera, date ...),
-- any number of them. One row per column: its kind (how its values are typed) and its position among them.
CREATE TABLE IF NOT EXISTS metadata_columns (
    column_name VARCHAR PRIMARY KEY,  -- lowercase, as manifest column names are matched
    kind VARCHAR NOT NULL CHECK (kind IN ({_one_of(METADATA_KINDS)})),
    position INTEGER NOT NULL
);

-- One row per image and non-empty metadata cell: text_value is the cell as written; number_value or
-- date_value is the cell parsed, for a number or date column (NULL there: the cell did not parse, a bad
-- value the ingest reported).
CREATE TABLE IF NOT EXISTS image_metadata (
    image_id BIGINT NOT NULL,
    column_name VARCHAR NOT NULL,
    text_value VARCHAR NOT NULL,
    number_value DOUBLE,
    date_value TIMESTAMP,
    PRIMARY KEY (image_id, column_name)
);

CREATE TABLE IF NOT EXISTS models (
    model_id VARCHAR PRIMARY KEY,
    role VARCHAR NOT NULL CHECK (role IN ('classifier', 'embedder')),
    arch VARCHAR NOT NULL,
    parent_id VARCHAR,
    method VARCHAR,
    checkpoint VARCHAR,
    num_classes INTEGER,
    embed_dim INTEGER,
    config JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS embedding_sets (
    embedder_id VARCHAR PRIMARY KEY,
    table_name VARCHAR NOT NULL UNIQUE,
    dim INTEGER NOT NULL,
    n INTEGER NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS predictions (
    model_id VARCHAR NOT NULL,
    image_id BIGINT NOT NULL,
    pred INTEGER NOT NULL,
    confidence FLOAT NOT NULL,
    probs FLOAT[] NOT NULL,
    loss FLOAT,
    correct BOOLEAN,
    PRIMARY KEY (model_id, image_id)
);

CREATE TABLE IF NOT EXISTS selections (
    selection_id VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    embedder_id VARCHAR,
    neighbours INTEGER,  -- DCD's search depth per failure image
    budget INTEGER,
    label_policy VARCHAR,
    index_type VARCHAR,
    recall FLOAT,
    params JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS selection_items (
    selection_id VARCHAR NOT NULL,
    image_id BIGINT NOT NULL,
    rank INTEGER NOT NULL,
    distance FLOAT,
    source_image_id BIGINT,
    label INTEGER NOT NULL,
    status VARCHAR NOT NULL DEFAULT '{SELECTION_STATUSES[0]}'
        CHECK (status IN ({_one_of(SELECTION_STATUSES)})),
    -- 'failure': one of the failure's own labelled images; 'retrieved': a pool image retrieval added
    kind VARCHAR NOT NULL DEFAULT 'retrieved',
    -- how likely the label is right, where a teacher labelled the image (core.dcd.debug_train)
    confidence FLOAT,
    PRIMARY KEY (selection_id, image_id)
);

CREATE TABLE IF NOT EXISTS metrics (
    model_id VARCHAR NOT NULL,
    eval_set VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    n INTEGER,
    computed_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (model_id, eval_set, metric)
);

-- AttributionScanner: one row per image and classifier; the heatmap is a flattened h x w grid.
CREATE TABLE IF NOT EXISTS attributions (
    model_id VARCHAR NOT NULL,
    image_id BIGINT NOT NULL,
    method VARCHAR NOT NULL,
    heatmap_size INTEGER NOT NULL,
    heatmap FLOAT[] NOT NULL,
    vector FLOAT[] NOT NULL,
    PRIMARY KEY (model_id, image_id)
);

CREATE TABLE IF NOT EXISTS slice_runs (
    run_id VARCHAR PRIMARY KEY,
    model_id VARCHAR NOT NULL,
    n_slices INTEGER NOT NULL,
    params JSON,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS slices (
    run_id VARCHAR NOT NULL,
    slice_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    size INTEGER NOT NULL,
    accuracy DOUBLE,
    error_rate DOUBLE,
    score DOUBLE NOT NULL,
    dominant_pred INTEGER,
    dominant_label INTEGER,
    confusion JSON,
    centroid FLOAT[] NOT NULL,
    mosaic_path VARCHAR,
    PRIMARY KEY (run_id, slice_id)
);

CREATE TABLE IF NOT EXISTS slice_members (
    run_id VARCHAR NOT NULL,
    slice_id INTEGER NOT NULL,
    image_id BIGINT NOT NULL,
    distance FLOAT,
    PRIMARY KEY (run_id, image_id)
);

CREATE TABLE IF NOT EXISTS annotations (
    annotation_id VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    slice_id INTEGER NOT NULL,
    kind VARCHAR NOT NULL CHECK (kind IN ({_one_of(ANNOTATION_KINDS)})),
    note VARCHAR,
    annotator VARCHAR,
    relabel_to INTEGER,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- A slice made a DCD target (core.dcd.slice_targets): its misclassified members split, seeded, into the
-- query part (DCD's E_sample for it) and the held-out part (its own eval set, never trained on).
CREATE TABLE IF NOT EXISTS slice_targets (
    target_id VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    slice_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    heldout_share DOUBLE NOT NULL,
    created_at TIMESTAMP DEFAULT current_timestamp,
    UNIQUE (run_id, slice_id)
);

CREATE TABLE IF NOT EXISTS slice_target_members (
    target_id VARCHAR NOT NULL,
    image_id BIGINT NOT NULL,
    part VARCHAR NOT NULL CHECK (part IN ('query', 'heldout')),
    PRIMARY KEY (target_id, image_id)
);

{FAILURES_DDL}
CREATE TABLE IF NOT EXISTS failure_members (
    failure_id VARCHAR NOT NULL,
    image_id BIGINT NOT NULL,
    part VARCHAR NOT NULL CHECK (part IN ('query', 'heldout')),
    PRIMARY KEY (failure_id, image_id)
);

-- Named eval sets beyond the splits (a slice target's held-out part, a mitigation's held-out members):
-- compute_metrics reports accuracy on each for every model that has predictions for its images.
CREATE TABLE IF NOT EXISTS eval_sets (
    eval_set VARCHAR NOT NULL,
    image_id BIGINT NOT NULL,
    description VARCHAR,
    PRIMARY KEY (eval_set, image_id)
);

-- Label issues (core.dcd.label_issues, from out-of-sample probabilities): one row per train or pool image
-- scored; score is the probability that the given label is right (low: likely wrong); decision is a
-- person's (relabel to suggested_label, drop, or keep as given), NULL until one is made.
CREATE TABLE IF NOT EXISTS label_issues (
    image_id BIGINT PRIMARY KEY,
    embedder_id VARCHAR NOT NULL,
    given_label INTEGER NOT NULL,
    suggested_label INTEGER NOT NULL,
    score FLOAT NOT NULL,
    is_issue BOOLEAN NOT NULL,
    decision VARCHAR CHECK (decision IN ('relabel', 'drop', 'keep')),
    computed_at TIMESTAMP DEFAULT current_timestamp
);

-- The noise the label-issue rule estimated in each scored split's labels: noise[t][g] = P(given g | true t)
-- (a K x K JSON array), the expected number of wrong labels among n_scored, and how the probabilities were
-- read (fitted_on: 'trusted' or 'given', core.dcd.label_issues.true_class_prior).
CREATE TABLE IF NOT EXISTS label_noise (
    split VARCHAR PRIMARY KEY,
    embedder_id VARCHAR NOT NULL,
    fitted_on VARCHAR NOT NULL,
    n_scored INTEGER NOT NULL,
    n_wrong_estimated DOUBLE NOT NULL,
    n_flagged INTEGER NOT NULL,
    noise JSON NOT NULL,
    computed_at TIMESTAMP DEFAULT current_timestamp
);
"""
