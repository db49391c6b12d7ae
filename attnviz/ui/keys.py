"""Every session-state key and URL query parameter that more than one module reads or writes,
defined once, each with the module that owns it (the one that draws its widget or keeps its
value). Other modules use these names, or a function of the owner, never the quoted string;
tests/test_layers.py checks it. Keys that one module alone uses stay in that module.
"""

# -- URL query parameters (?name=value): what a shared link restores -----------------------------
MODEL = "model"  # ui.models.model_picker: the chosen model (also its session key, shared by pages)
LAYER = "layer"  # ui.selectors: the layer shown
HEAD = "head"  # ui.selectors: the head shown, an index or a fusion ("mean", "max", "min")
VIEW = "view"  # ui.views.show_views: the open view of the text, image and flow pages (also the text
#                page's tab widget key, by which ui.text.open_in_heatmap and the tests open a view)
HEADS_VIEW = "heads_view"  # ui.views.show_views on the head atlas page (its own, as the page had)
KIND = "kind"  # ui.inputs.kind_picker: text or image input (flow and explain pages)
STACK = "stack"  # ui.inputs.stack_picker: encoder, decoder or cross attention
SAMPLE = "sample"  # ui.inputs.photo_input: the sample photo (absent while an upload is shown)
SHOW = "show"  # ui.mixing.show_picker: what the text and image explorers show (attention, a mixing method)
METHOD = "method"  # ui.flow: the matrix the flow page's rollout and flow views carry (attention or a mixing method)
SIZE = "size"  # ui.inputs.input_size_picker: the shorter side of an image model's input, px
TOKEN = "token"  # ui.flow.routes_view: the token of the routes' node opened in its layer's heatmap or overlay

# -- session state --------------------------------------------------------------------------------
TEXT = "text_text"  # ui.inputs.text_input: the text box's text, kept across pages
STAGE = "image_stage"  # ui.inputs.stage_picker: the stage of a windowed image model (Swin)
FLOW_KIND = "flow_kind"  # ui.inputs.kind_picker on the flow page (ui.inputs.open_with presets it)
