"""Model zoo: every checkpoint's card and measured metrics; choose the models the other pages use;
upload your own checkpoints and delete them again."""

import pandas as pd
import streamlit as st

from explrobust_core import importers, uploads
from explrobust_core.data import DATASETS
from explrobust_core.models import ARCHITECTURES
from explrobust_core.zoo import card_origin, user_zoo_dir
from pages import ui

ui.page_header(
    "Model zoo",
    "Every checkpoint with its card and measured numbers: shipped models (natural, PGD-AT, TRADES, SEP±, "
    "IG-NORM, ART on mnist5k) and the ones you trained or uploaded.",
    "Choose the models to compare below: every other page starts from this choice.",
)
entries = ui.checkpoints()
for kind, text in st.session_state.pop("zoo_flash", []):  # what the last upload/delete did
    getattr(st, kind)(text)
if any(n not in entries for n in st.session_state.get("zoo_selection_widget", [])):
    del st.session_state["zoo_selection_widget"]  # a chosen model is gone: rebuild the widget from what exists
    st.session_state[ui.SELECTED] = [n for n in st.session_state.get(ui.SELECTED, []) if n in entries]


def refresh(*messages: tuple[str, str]) -> None:
    """The listing and the loaded models changed on disk: drop their caches, show ``messages``
    ((kind, text) pairs) after a rerun."""
    ui.refresh_checkpoints()
    st.session_state["zoo_flash"] = list(messages)
    st.rerun()


def row(name: str, entry) -> dict:
    card = entry.card
    summary = (card.metrics.get("evaluation") or {}).get("summary", {})
    pgd = {round(r["eps"], 4): r["accuracy"] for r in summary.get("pgd_accuracy", [])}
    if not summary:  # not evaluated yet: the trainer's held-out numbers (its own ε), marked as such
        train_eval = card.metrics.get("train_eval") or {}
        summary = {"clean_accuracy": card.metrics.get("train_clean_accuracy")}
        if train_eval.get("pgd_eps") is not None:
            pgd = {round(float(train_eval["pgd_eps"]), 4): card.metrics.get("train_pgd_accuracy")}
    expl = summary.get("explanation", {})
    le = lambda key: (expl.get(key) or {}).get("mean")  # noqa: E731
    return {"model": name, "objective": card.objective, "architecture": card.architecture,
            "clean acc": summary.get("clean_accuracy"), "PGD acc ε=0.3": pgd.get(0.3),
            "L_e start ×1e-7": le("explanation_loss_start_paper"), "L_e end ×1e-7": le("explanation_loss_end_paper"),
            "epochs": card.epochs, "train time (s)": card.wall_time_s,
            "source": card_origin(card, uploads.is_user_checkpoint(entry.path))}


if entries:
    table = pd.DataFrame([row(name, e) for name, e in entries.items()])
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"clean acc": st.column_config.NumberColumn(format="percent"),
                                "PGD acc ε=0.3": st.column_config.NumberColumn(format="percent")})
    ui.downloads("model_zoo", data=table)
    ui.selection_widget(list(entries))

    with st.expander("Model cards"):
        name = st.selectbox("Card", list(entries))
        st.json(entries[name].card.model_dump(mode="json"), expanded=False)
else:
    st.info("No checkpoints yet. Train one with `explrobust train`, rebuild the zoo with models_zoo/build.sh, "
            "or upload one below.")

for entry in ui.broken_checkpoints():
    st.warning(f"{entry.path}: {entry.error}")

# --- upload ------------------------------------------------------------------------------------------

with st.expander("Upload a checkpoint", expanded=False):
    st.caption(
        "A `.safetensors` file or a PyTorch state dict (`.pt`/`.pth`, `model.state_dict()` saved with "
        "`torch.save`). Nothing in it is executed: pickled objects other than tensors are refused. Layout "
        "*explrobust*: the weights must match the architecture below exactly; input size, classes and normalisation "
        "come from the dataset (or from a card JSON, e.g. one written by `explrobust train`). Layouts *robustbench*, "
        "*trades*, *madrylab*: a published model, named in *Published architecture* (wrn-28-10, wrn-34-10, "
        "wrn-34-20, wrn-70-16, preact-resnet18, resnet18); *torchvision*, *timm*: the library's model name there "
        "(e.g. resnet18); for an image folder give its data root and input size. It goes to your own zoo, "
        f"`{user_zoo_dir()}`, never into the shipped one."
    )
    with st.form("upload_checkpoint"):
        weights = st.file_uploader("Weights", type=["safetensors", "pt", "pth"], key="upload_weights")
        card_file = st.file_uploader("Model card JSON (optional; needed for folder datasets)", type=["json"],
                                     key="upload_card")
        c1, c2, c3 = st.columns(3)
        new_name = c1.text_input("Name", max_chars=64, placeholder="my_model", key="upload_name",
                                 help="letters, digits, '_', '.', '-'; shown as dataset/name")
        datasets = DATASETS.names()
        dataset = c2.selectbox("Dataset", datasets, index=datasets.index("mnist5k"), key="upload_dataset")
        architecture = c3.selectbox("Architecture", ARCHITECTURES.names(), key="upload_architecture")
        arch_options = c1.text_area("Architecture options (JSON)", "{}", key="upload_arch_options",
                                    help='e.g. {"width1": 32}; the defaults are on the Overview page')
        objective = c2.selectbox("Training objective", uploads.objective_names(), key="upload_objective",
                                 help="'other': trained with a method this workbench does not have")
        objective_options = c3.text_area("Objective options (JSON)", "{}", key="upload_objective_options")
        epochs = c1.number_input("Epochs (optional)", min_value=0, max_value=100_000, value=None, key="upload_epochs")
        notes = c2.text_area("Notes", "", max_chars=10_000, key="upload_notes")
        replace = c3.checkbox("Replace my model of the same name", key="upload_replace")
        c1, c2, c3 = st.columns(3)
        layout = c1.selectbox("Layout of the file", importers.form_layouts(), key="upload_layout",
                              help="whose parameter names the file uses")
        published_arch = c2.text_input("Published architecture", "", key="upload_published_arch",
                                       placeholder="wrn-28-10 / resnet18", help="for every layout but explrobust")
        norm = c3.text_input("Mean; std (optional)", "", key="upload_norm", placeholder="0.49,0.48,0.45; 0.25,0.24,0.26",
                             help="default: the layout's convention (RobustBench/TRADES: none; madrylab: the file's)")
        c1, c2, _ = st.columns(3)
        data_root = c1.text_input("Data root (optional)", "", key="upload_data_root", placeholder="/data/my_pngs",
                                  help="published layouts: the dataset's folder on this machine (required for image "
                                       "folders: <root>/train/<class>/…, <root>/test/<class>/…)")
        input_size = c2.number_input("Input size (optional)", min_value=8, max_value=512, value=None,
                                     key="upload_input_size", help="published layouts: the side images are "
                                                                   "resized and centre-cropped to (image folders)")
        submitted = st.form_submit_button("Upload")
    if submitted:
        try:
            if weights is None:
                raise uploads.UploadError("choose a weights file first")
            if layout != importers.OWN_LAYOUT:  # a published layout: names mapped, card from the dataset
                mean_text, _, std_text = norm.partition(";")
                installed = importers.import_upload(weights.getvalue(), weights.name, layout=layout, arch=published_arch,
                                                    dataset=dataset, name=new_name, mean=mean_text, std=std_text,
                                                    notes=notes, overwrite=replace, data_root=data_root,
                                                    input_size=input_size)
            else:
                card = uploads.card_from_form(
                    name=new_name.strip(), dataset=dataset, architecture=architecture, arch_config=arch_options,
                    objective=objective, objective_config=objective_options,
                    epochs=None if epochs is None else int(epochs), notes=notes,
                    card_json=None if card_file is None else card_file.getvalue())
                installed = uploads.install_checkpoint(weights.getvalue(), weights.name, card, overwrite=replace)
        except uploads.UploadError as err:
            st.error(f"Not uploaded: {err}")
        else:
            refresh(("success", f"Added {installed.card.dataset}/{installed.card.name} to your zoo ({installed.path})."),
                    *(("info", notice) for notice in installed.notices))

# --- delete (user models only) -----------------------------------------------------------------------

mine = {name: e for name, e in entries.items() if uploads.is_user_checkpoint(e.path)}
with st.expander("Delete one of your models", expanded=False):
    if not mine:
        st.caption("You have no uploaded or trained models; the shipped ones cannot be deleted here.")
    else:
        victim = st.selectbox("Your model", list(mine), key="delete_choice")
        sure = st.checkbox(f"Yes, delete {victim} (weights and card) for good", key="delete_confirm")
        if st.button("Delete", disabled=not sure, key="delete_button"):
            try:
                removed = uploads.delete_user_checkpoint(mine[victim].path)
            except uploads.UploadError as err:
                st.error(str(err))
            else:
                st.session_state[ui.SELECTED] = [n for n in st.session_state.get(ui.SELECTED, []) if n != victim]
                refresh(("success", f"Deleted {victim} ({len(removed)} files)."))
