"""A compiled path for small batches of tree models: the forest converted to ONNX at load, run by ONNX
Runtime's TreeEnsemble (a few microseconds a row) where the tree library itself costs 100 us or more
per call, whatever the rows (XGBoost; scikit-learn's trees, forests and gradient boosting, whose
forests call every tree from Python through joblib: 5-6 ms for one row).

Models whose library compares float32 features (XGBoost, scikit-learn's trees) are converted to a
float32 ONNX forest, which then compares the same numbers; LightGBM compares doubles with double
thresholds, so its forest is written with double thresholds and fed doubles (``dtype``). It is built in
a background thread after loading (the library answers meanwhile), and used only when it answers as the
library does: on sample rows (with NaNs, unless ``finite_only``) one of the converted model's outputs
must equal the library's output, shape and dtype kept, values within ``RTOL``/``ATOL`` (float32 sums in
another order: a few ulps) or exactly for labels. Then the crossover is measured at load: the compiled
path takes batches up to the largest size at which it was faster; bigger batches go to the library.
``finite_only``: the converter does not know how the library routes NaN (scikit-learn sends it down the
branch most training rows took when none were missing), and the library refuses infinities
(scikit-learn), so a batch holding a non-finite value goes to the library. Loading asks for it
(``LoadOptions.small_batches``: servers do, batch jobs do not); ``model_config={"compiled": False}``
turns it off.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

log = logging.getLogger("arrowscore.flavors.compiled")

RTOL, ATOL = 1e-5, 1e-6
SIZES = (1, 4, 16, 64, 256, 1024, 4096)  # batch sizes the crossover is measured at (up to the first it loses)


def sample_rows(width: int, rows: int = 64, nans: bool = True) -> np.ndarray:
    sample = np.random.default_rng(0).normal(size=(rows, width)) * 3
    if nans:
        sample[::7, ::3] = np.nan
    return sample


def _adapter(outputs: list, want: np.ndarray):
    """Which converted output, reshaped how, gives ``want`` (None: none does)."""
    for i, got in enumerate(outputs):
        got = np.asarray(got)
        for shape in (lambda a: a, lambda a: a.reshape(len(a)), lambda a: a[:, 1]):
            try:
                same = shape(got)
            except (ValueError, IndexError):
                continue
            if same.shape != want.shape:
                continue
            if want.dtype.kind not in "fc":  # labels: integers, booleans, strings
                ok = np.array_equal(same.astype(want.dtype), want)
            else:
                ok = np.allclose(same, want, rtol=RTOL, atol=ATOL, equal_nan=True)
            if ok:
                return i, shape
    return None


def _best_us(fn, x, budget_s: float = 0.02) -> float:
    """Microseconds per call, best of 3 rounds of up to 30 calls (fewer for slow calls: ~``budget_s`` a round)."""
    start = time.perf_counter()
    fn(x)
    reps = max(2, min(30, int(budget_s / max(time.perf_counter() - start, 1e-7))))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            fn(x)
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e6


def _build(native, convert, width: int, what: str, finite_only: bool = False, dtype=np.float32):
    """The compiled small-batch predict function, or None (not convertible, answers otherwise, not faster)."""
    try:
        import onnxruntime as ort

        proto = convert()
    except Exception as exc:  # no converter installed, or a model it does not know: the library alone
        log.debug("%s: no compiled small-batch path (%s: %s)", what, type(exc).__name__, exc)
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # small batches: one thread, no pool to wake
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: a converted graph may declare output shapes it then widens, which
    # ONNX Runtime warns about on every call (scikit-learn multi-output forests: {-1,1} declared, {n,2} given)
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    run = session.run
    sample = sample_rows(width, nans=not finite_only)
    want = np.asarray(native(sample))
    chosen = _adapter(run(None, {name: sample.astype(dtype)}), want)
    if chosen is None:
        log.info("%s: the compiled small-batch path does not answer as the library does; not used", what)
        return None
    index, shape = chosen
    out_dtype = want.dtype

    def compiled(x):
        if finite_only:
            with np.errstate(over="ignore"):  # too large for a float32: infinity, then the library's own error
                feed = np.ascontiguousarray(x, dtype=dtype)
            if not np.isfinite(feed).all():  # NaN, infinity, or too large for a float32
                return native(x)
        else:
            feed = np.ascontiguousarray(x, dtype=dtype)
        out = shape(run(None, {name: feed})[index])
        return out.astype(out_dtype, copy=False)

    for rows in (sample[:1], sample[:5], np.asfortranarray(sample)):  # one row, a few, column-major
        if _adapter([compiled(rows)], np.asarray(native(rows))) is None:
            log.info("%s: the compiled small-batch path differs on some rows; not used", what)
            return None
    crossover = 0
    for rows in SIZES:
        x = np.resize(sample, (rows, width))
        if _best_us(compiled, x) >= _best_us(native, x):
            break
        crossover = rows
    if not crossover:
        return None
    log.info("%s: batches of up to %d rows take the compiled path", what, crossover)

    def predict(x):
        return compiled(x) if x.shape[0] <= crossover else native(x)

    predict.crossover = crossover
    return predict


_pending: list[threading.Event] = []


class SmallBatchPath:
    """``native`` (ndarray -> ndarray) at first; the compiled path replaces it once built, in a background
    thread, so that loading (a server's cold start) does not wait for the converter (~0.5 s)."""

    def __init__(self, native, convert, width: int, what: str, finite_only: bool = False, dtype=np.float32):
        self.fn, self.crossover = native, 0
        self.ready = threading.Event()
        _pending.append(self.ready)

        def build():
            try:
                compiled = _build(native, convert, width, what, finite_only, dtype)
                if compiled is not None:
                    self.fn, self.crossover = compiled, compiled.crossover
            except Exception:  # the library's own path stays; nothing is lost but speed
                log.exception("%s: building the compiled small-batch path failed; the library answers", what)
            finally:
                self.ready.set()

        threading.Thread(target=build, name="arrowscore-compile", daemon=True).start()

    def __call__(self, x):
        return self.fn(x)


def predict_fn(fn, post=None):
    """``fn`` (ndarray -> ndarray) as a Predictor's ``predict(x, params)``, ``post`` applied to its
    answers; its compiled path (a SmallBatchPath, else None) is ``predict.small_batches``."""
    if post is None:
        def predict(x, params):
            return fn(x)
    else:
        def predict(x, params):
            return post(fn(x))
    predict.small_batches = fn if isinstance(fn, SmallBatchPath) else None
    return predict


def wait(timeout: float | None = None) -> bool:
    """Wait until every compiled path started so far is built (or given up); False on timeout."""
    return all(event.wait(timeout) for event in list(_pending))
