"""The lab's attention classifiers: short runs learn well above chance and put their attention on
the rationale; saved models reload with identical attention and predictions and go through
attnviz.capture; bad CSV files and class-folder zips are refused with a clear message; the
`train` command prints its JSON and refuses misfits in one line."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from test_custom_model import zipped

import attnviz
from attnviz.lab import custom, datasets, tasks
from attnviz.lab.classify import Classifier, ClassifierConfig
from attnviz.lab.train import Trainer, evaluate_classifier


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def reviews():
    return datasets.sentiment(seed=0, n_train=2000, n_test=300)


@pytest.fixture(scope="module")
def digits():
    return datasets.digits(side=32, seed=0)


def small(arch: str, data, seed: int = 0, **sizes) -> Classifier:
    net = tasks.build(arch, data, seed)
    if sizes:
        cfg = ClassifierConfig.from_json({**net.to_json(), **sizes})
        net = Classifier(cfg, net.vocab if cfg.arch != "vit" else None, net.labels, seed=seed)
    return net


def test_reviews_are_seeded_and_their_rationale_decides():
    a, b = datasets.sentiment(seed=3, n_train=50, n_test=20), datasets.sentiment(seed=3, n_train=50, n_test=20)
    assert a.test == b.test and a.train == b.train
    assert a.test != datasets.sentiment(seed=4, n_train=50, n_test=20).test
    for words, label, why in zip(a.test_words, a.test_y, a.rationale):
        decisive = [w for w, r in zip(words, why) if r]  # negations and cue words, in order
        assert any(w in datasets.POSITIVE + datasets.NEGATIVE for w in decisive)
        negated = False
        for w in decisive:  # every cue, flipped by the negation before it, gives the label
            if w in datasets.NEGATIONS:
                negated = True
            else:
                assert ((w in datasets.POSITIVE) != negated) == bool(label), (words, label)
                negated = False
    assert 0.3 < a.test_y.mean() < 0.7


def test_lstm_attention_learns_sentiment_and_attends_to_the_rationale(reviews):
    net = small("lstm-attention", reviews, d_model=32)
    before = evaluate_classifier(net, reviews)
    Trainer(net, data=reviews, seed=0, lr=1e-2).run(90)
    after = evaluate_classifier(net, reviews)
    assert after.accuracy > 0.85 and after.accuracy > before.accuracy + 0.25, (before.accuracy, after.accuracy)
    assert after.rationale_mass > 2.5 * after.chance_mass, (after.rationale_mass, after.chance_mass)
    assert after.confusion.sum() == len(reviews.test_y) and np.trace(after.confusion) == round(after.accuracy * 300)
    assert all(abs(w.sum() - 1) < 1e-4 for w in after.weights)


@pytest.mark.parametrize("arch", ["attention-lstm", "transformer"])
def test_other_text_architectures_learn(arch, reviews):
    net = small(arch, reviews, d_model=32, n_layers=1)
    Trainer(net, data=reviews, seed=0, lr=1e-2).run(150)
    assert evaluate_classifier(net, reviews).accuracy > 0.65  # chance is about 0.5


def test_vit_learns_digits(digits):
    net = tasks.build("vit", digits)
    Trainer(net, data=digits, seed=0, lr=tasks.LEARNING_RATES["vit"]).run(80)
    done = evaluate_classifier(net, digits)
    assert done.accuracy > 0.5, done.accuracy  # chance is 0.1
    assert len(done.weights[0]) == (32 // tasks.PATCH) ** 2


def by_hand_pooling(net: Classifier, ids: list[int]) -> np.ndarray:
    """lstm-attention's pooling weights recomputed from its weights: softmax(u^T tanh(W h_t + b))."""
    with torch.no_grad():
        x = torch.tensor([ids])
        states, _ = net.recurrent(net.tokens(x), x != 0)
        a = net.attention
        return torch.softmax(a.u(torch.tanh(a.project(states)))[0, :, 0], 0).numpy()


@pytest.mark.parametrize("arch", ["lstm-attention", "attention-lstm", "transformer"])
def test_saved_text_classifier_reloads_with_identical_attention(arch, reviews, tmp_path):
    net = small(arch, reviews, seed=1, d_model=16, n_heads=2, n_layers=1)
    Trainer(net, data=reviews, seed=1).run(3)
    text = "The plot was not very good , truly dull !"
    before = attnviz.capture(custom.as_model(net, "fresh"), text)
    folder = custom.save(net, tmp_path / arch)
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == "classifier" and config["arch"] == arch and config["labels"] == ["negative", "positive"]
    model = attnviz.load_model(str(folder))
    after = attnviz.capture(model, text)
    np.testing.assert_array_equal(after.attn["encoder"], before.attn["encoder"])
    ids = torch.tensor([model.tokenizer.encode(text).ids])
    with torch.inference_mode():
        np.testing.assert_array_equal(model.net(ids).numpy(), net.eval()(ids).numpy())
    words = ["the", "plot", "was", "not", "very", "good", ",", "truly", "dull", "!"]
    if arch == "transformer":
        assert after.tokens == ["[CLS]"] + words and after.attn["encoder"].shape == (1, 2, 11, 11)
    else:  # the pooling attention: one row, over the words
        assert after.tokens == ["[POOL]"] + words and after.special[0] and not any(after.special[1:])
        pool = after.attn["encoder"][0, 0].astype(np.float32)
        assert pool.shape == (11, 11) and pool[0, 0] == 0 and abs(pool[0].sum() - 1) < 2e-3
        np.testing.assert_array_equal(pool[1:, 1:], np.eye(10))
        if arch == "lstm-attention":
            np.testing.assert_allclose(pool[0, 1:], by_hand_pooling(model.net, ids[0].tolist()), atol=1e-3)
    assert any("never saw" in w for w in after.warnings)  # 'plot' is known; ',' '!' are not


def test_saved_vit_reloads_and_captures_an_image(digits, tmp_path):
    net = tasks.build("vit", digits, seed=2)
    Trainer(net, data=digits, seed=2, lr=1e-3).run(3)
    folder = custom.save(net, tmp_path / "vit")
    model = attnviz.load_model(str(folder))
    image = Image.fromarray(digits.test[0])
    a, b = attnviz.capture(custom.as_model(net, "fresh"), image), attnviz.capture(model, image)
    np.testing.assert_array_equal(a.attn["encoder"], b.attn["encoder"])
    grid = 32 // tasks.PATCH
    assert b.kind == "image" and b.attn["encoder"].shape == (2, 4, grid * grid + 1, grid * grid + 1)
    assert b.grid.rows == b.grid.cols == grid and b.tokens[0] == "[CLS]" and b.image.shape == (32, 32, 3)
    with torch.inference_mode():
        x = datasets.pixels(digits.test[:1])
        np.testing.assert_array_equal(model.net(x).numpy(), net(x).numpy())
    with pytest.raises(attnviz.AttnvizError, match="image model"):
        attnviz.capture(model, "a text")


def test_configs_out_of_bounds_are_refused():
    with pytest.raises(attnviz.AttnvizError, match="4,096 patches"):
        ClassifierConfig(arch="vit", task="images", n_classes=2, length=256, patch=4)
    with pytest.raises(attnviz.AttnvizError, match="d_model"):
        ClassifierConfig(arch="lstm-attention", task="csv", n_classes=2, length=20, d_model=10**6)
    with pytest.raises(attnviz.AttnvizError, match="Unknown architecture"):
        ClassifierConfig(arch="rnn", task="csv", n_classes=2, length=20)


# -- the user's CSV ----------------------------------------------------------------------------
def csv_bytes(rows: list[str], header: str = "text,label") -> bytes:
    return ("\n".join([header] + rows) + "\n").encode()


GOOD = [f'"{w} movie, {i}",{"pos" if w == "great" else "neg"}' for i in range(20) for w in ("great", "awful")]


def test_csv_reads_with_a_held_out_split():
    data = datasets.read_csv(csv_bytes(GOOD + ["only one column", '"",neg']), "reviews.csv")
    assert data.labels == ["neg", "pos"] and len(data.train) + len(data.test) == 40 and len(data.test) == 8
    assert "great" in data.vocab and data.vocab[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert any("row 42: 1 column" in n and "row 43: empty text" in n for n in data.notes)
    tsv = datasets.read_csv("\n".join(r.replace('",', '"\t') for r in GOOD).encode(), "r.tsv")
    assert tsv.labels == ["neg", "pos"] and len(tsv.train) == 32


@pytest.mark.parametrize("data, match", [
    (csv_bytes(["a,b,c,d"] * 30 + GOOD[:10]), "bad .*row 2: 4 column"),
    (csv_bytes([f"text {i},pos" for i in range(20)]), "every row has the label 'pos'"),
    ("text,label\ncafé,pos\n".encode("latin-1"), "not UTF-8"),
    (b"", "empty"),
    (csv_bytes([f"t {i},{i}" for i in range(60)]), "at most 50 classes"),
])
def test_bad_csv_files_are_refused_clearly(data, match):
    with pytest.raises(attnviz.AttnvizError, match=match):
        datasets.read_csv(data, "mine.csv")


def test_oversized_csv_is_refused():
    with pytest.raises(attnviz.AttnvizError, match="at most 21 MB"):
        datasets.read_csv(b"x" * (datasets.MAX_CSV_BYTES + 1), "big.csv")


# -- the user's class-folder zip ---------------------------------------------------------------
def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 9), colour).save(buf, "PNG")
    return buf.getvalue()


def class_folders(n: int = 5) -> dict[str, bytes]:
    return {f"shapes/{c}/{i}.png": png(rgb) for c, rgb in (("red", (200, 0, 0)), ("blue", (0, 0, 200)))
            for i in range(n)}


def test_class_folder_zip_reads():
    data = datasets.read_image_zip(zipped(class_folders() | {"__MACOSX/._x": b"junk"}), "shapes.zip", side=16)
    assert data.labels == ["blue", "red"] and data.train.shape[1:] == (16, 16, 3) and len(data.test) == 2


@pytest.mark.parametrize("extra, match", [
    ({"shapes/red/notes.txt": b"hello"}, "not an image"),
    ({"shapes/red/fake.png": b"not a png"}, "not an image that attnviz can read"),
    ({"../evil.png": png((0, 0, 0))}, "outside"),
    ({"/etc/evil.png": png((0, 0, 0))}, "outside"),
    ({"shapes/loose.png": png((0, 0, 0))}, "not in a class folder"),
])
def test_bad_class_folder_zips_are_refused(extra, match):
    with pytest.raises(attnviz.AttnvizError, match=match):
        datasets.read_image_zip(zipped(class_folders() | extra), "shapes.zip")


def test_too_many_files_and_one_class_are_refused(monkeypatch):
    monkeypatch.setattr(datasets, "MAX_IMAGES", 6)
    with pytest.raises(attnviz.AttnvizError, match="more than 6 files"):
        datasets.read_image_zip(zipped(class_folders(4)), "shapes.zip")
    with pytest.raises(attnviz.AttnvizError, match="at least two"):
        datasets.read_image_zip(zipped({f"red/{i}.png": png((200, 0, 0)) for i in range(3)}), "red.zip")


def test_a_folder_of_class_folders_reads_and_refuses_links(tmp_path):
    for name, data in class_folders(3).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    data = tasks.load_data(f"images:{tmp_path / 'shapes'}")
    assert data.labels == ["blue", "red"] and data.side == tasks.IMAGE_SIDE and len(data.test) == 1
    (tmp_path / "shapes" / "red" / "link.png").symlink_to(tmp_path / "shapes" / "red" / "0.png")
    with pytest.raises(attnviz.AttnvizError, match="links"):
        tasks.load_data(f"images:{tmp_path / 'shapes'}")
    with pytest.raises(attnviz.AttnvizError, match="neither a folder"):
        tasks.load_data(f"images:{tmp_path / 'nowhere'}")


def test_a_zip_holding_a_link_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("red/link.png")
        info.external_attr = 0o120777 << 16  # a symbolic link
        z.writestr(info, "/etc/passwd")
        z.writestr("blue/1.png", png((0, 0, 200)))
    with pytest.raises(attnviz.AttnvizError, match="link"):
        datasets.read_image_zip(buf.getvalue(), "links.zip")


# -- the command line --------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnviz", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_train_command_prints_json_and_refuses_misfits(tmp_path):
    done = cli("train", "--task", "sentiment", "--arch", "lstm-attention", "--steps", "5", "--out",
               str(tmp_path / "s"), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"task", "arch", "accuracy", "seconds", "steps", "rationale_mass", "chance_mass"}
    assert out["steps"] == 5 and 0 < out["chance_mass"] < 1
    assert attnviz.load_model(str(tmp_path / "s")).net.config.arch == "lstm-attention"
    for task, arch in (("sentiment", "vit"), ("digits", "transformer"), ("copy", "lstm-attention")):
        bad = cli("train", "--task", task, "--arch", arch, "--out", str(tmp_path / "x"), "--json")
        lines = [line for line in bad.stderr.splitlines() if line.strip()]
        assert bad.returncode == 1 and len(lines) == 1 and "does not fit" in lines[0], bad.stderr
    csv_file = tmp_path / "r.csv"
    csv_file.write_bytes(csv_bytes(GOOD))
    done = cli("train", "--task", f"csv:{csv_file}", "--arch", "attention-lstm", "--steps", "3", "--out",
               str(tmp_path / "c"), "--json")
    assert done.returncode == 0 and set(json.loads(done.stdout)) == {"task", "arch", "accuracy", "seconds", "steps"}
