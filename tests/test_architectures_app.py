"""The pages with the tiny checkpoints of tests/arch_zoo.py (AppTest, through app.py): a Swin
folder on the image explorer (a stage picker, the patch view) and on the Local vs global page
(distance versus depth of the stage picked); a vision-language folder on the image explorer
(the prompt box, a text token's attention on the photo beside text-to-text attention) and
refused on the Local vs global page with one message."""
import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import arch_zoo  # noqa: E402
from apptest_tools import array, assert_clean, charts, open_page  # noqa: E402

import attnviz  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return arch_zoo.page_folders(tmp_path_factory.mktemp("app-zoo"), "llava")


def test_swin_on_the_image_explorer_and_the_local_global_page(folders):
    at = open_page("pages/image.py", model=str(folders["swin"]), sample="cat")
    assert_clean(at)
    stage = next(w for w in at.get("segmented_control") if w.label == "Stage")
    assert stage.options == ["stage1 · 56 x 72", "stage2 · 28 x 36"] and "image_patch" in charts(at)
    assert any("tiny-swin stage1 saw" in c.value and "no prefix token" in c.value for c in at.caption)
    stage.set_value("stage2").run()
    assert_clean(at)
    assert any("tiny-swin stage2 saw" in c.value for c in at.caption)

    at = open_page("pages/flow.py", kind="image", model=str(folders["swin"]), sample="cat")
    assert_clean(at)
    figs = charts(at)
    assert {"flow_depth", "flow_beside_depth"} <= set(figs), "Swin's stage beside DINOv2"
    assert "dinov2-small" in figs["flow_beside_depth"]["layout"]["title"]["text"]
    assert array(figs["flow_beside_depth"]["data"][0]["y"]).size == 12 * 6, "one dot per head of DINOv2-small"


def test_vision_language_on_the_image_explorer(folders):
    from PIL import Image

    from attnviz.samples import sample_bytes

    at = open_page("pages/image.py", model=str(folders["llava"]), sample="cat")
    assert_clean(at)
    figs = charts(at)
    assert {"image_vlm_overlay", "image_vlm_text"} <= set(figs)
    assert at.text_input(key="image_prompt").value == "What is in the picture?"
    model = attnviz.load_model(str(folders["llava"]))
    photo = Image.open(io.BytesIO(sample_bytes("cat"))).convert("RGB")
    result = attnviz.capture(model, photo, prompt="What is in the picture?", generate=8)
    last = len(result.tokens) - 1
    points = next(t for t in figs["image_vlm_overlay"]["data"] if t.get("type") == "scatter")
    shown = np.array([float(v) for v in points["text"]], dtype=np.float32)
    expected = result.image_heat("image", result.attn["decoder"].shape[0] - 1, 0, last)  # the last layer, head 0
    assert np.allclose(shown.reshape(expected.shape), expected, atol=1e-3), "the last token over the photo"

    at = open_page("pages/flow.py", kind="image", model=str(folders["llava"]), sample="cat")
    assert not at.exception and len(at.error) == 1
    assert "family is vision-language" in at.error[0].value and "image explorer" in at.error[0].value


def test_an_unsupported_checkpoint_gets_one_message_on_the_page(tmp_path):
    import transformers

    folder = tmp_path / "tiny-resnet"
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    transformers.ResNetModel(config).save_pretrained(folder)
    at = open_page("pages/image.py", model=str(folder), sample="cat")
    assert not at.exception and len(at.error) == 1
    assert "without attention layers" in at.error[0].value and "resnet" in at.error[0].value
