"""Writes the checked-in corpus of bad (and a few good) inputs: each case a folder with case.json (the command,
the expected exit code, a piece of the expected message) and the files it needs. Model and run cases hold
only the files that differ from a real tiny model or run, which the test builds (see test_corpus.py).
Rerun to regenerate: python tests/corpus/make_corpus.py"""

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).parent


def photo(path: Path, size=(40, 40), colour=(200, 40, 40), **save) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, **save)


def case(name: str, args: list[str], exit: int, stderr: str = "", **extra) -> Path:
    folder = ROOT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "case.json").write_text(json.dumps({"args": args, "exit": exit, "stderr": stderr, **extra}, indent=1) + "\n")
    return folder


TRAIN = ["train", "lora", "--model", "{tiny}", "--subject", "{case}/photos", "--class", "dog", "--out", "{tmp}/run",
         "--quiet", "--steps", "1"]
GENERATE = ["generate", "{run}", "a {subject}", "-n", "1", "--steps", "2", "--out", "{tmp}/images"]
ON_MODEL = ["train", "lora", "--model", "{model}", "--subject", "{dog}", "--class", "dog", "--out", "{tmp}/run",
            "--quiet", "--steps", "1"]

# --- photos ---------------------------------------------------------------------------------------------
f = case("photo-1x1", TRAIN, 2, "dot.png is 1x1 px")
photo(f / "photos/00.png"); photo(f / "photos/dot.png", size=(1, 1))
f = case("photo-empty-file", TRAIN, 2, "is empty (0 bytes)")
photo(f / "photos/00.png"); (f / "photos/01.jpg").write_bytes(b"")
f = case("photo-truncated-jpeg", TRAIN, 2, "damaged or truncated")
buffer = io.BytesIO(); Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
photo(f / "photos/00.png"); (f / "photos/01.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
f = case("photo-text-named-png", TRAIN, 2, "not an image Pillow can read")
(f / "photos").mkdir(); (f / "photos/00.png").write_text("this is not a picture")
f = case("photo-animated-gif", TRAIN, 2, "is animated")
frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0))]
(f / "photos").mkdir(); frames[0].save(f / "photos/00.gif", save_all=True, append_images=frames[1:])
f = case("photo-heic-without-plugin", TRAIN, 2, "phone.heic", heif_plugin=False)
photo(f / "photos/00.png"); (f / "photos/phone.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic")
f = case("photo-folder-of-notes", TRAIN, 2, "holds no images")
(f / "photos").mkdir(); (f / "photos/notes.txt").write_text("my dog")
f = case("photo-mask-wrong-size", TRAIN + ["--masked-loss"], 2, "is 8x8 but its photo is 40x40")
photo(f / "photos/00.png"); (f / "photos/masks").mkdir(); Image.new("L", (8, 8), 255).save(f / "photos/masks/00.png")
f = case("photo-mask-all-black", TRAIN + ["--masked-loss"], 2, "is all black")
photo(f / "photos/00.png"); (f / "photos/masks").mkdir(); Image.new("L", (40, 40), 0).save(f / "photos/masks/00.png")
f = case("photo-avif-16bit-cmyk-accepted", TRAIN, 0)
photo(f / "photos/00.avif")
Image.fromarray((np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40)).save(f / "photos/01.png")
Image.new("CMYK", (40, 40), (0, 200, 200, 0)).save(f / "photos/02.jpg")
f = case("photo-exif-rotated-and-transparent-accepted", TRAIN, 0)
(f / "photos").mkdir()
exif = Image.Exif(); exif[0x0112] = 6
Image.new("RGB", (60, 40), (20, 200, 20)).save(f / "photos/00.jpg", exif=exif)
Image.new("RGBA", (40, 40), (0, 0, 255, 0)).save(f / "photos/01.png")

# --- model folders (overlays on the tiny model) ---------------------------------------------------------
case("model-missing", ["train", "lora", "--model", "{tmp}/nowhere", "--subject", "{dog}", "--class", "dog",
                       "--out", "{tmp}/run"], 2, "no such folder or file")
f = case("model-no-index", ON_MODEL, 2, "has no model_index.json", model={"remove": ["model_index.json"]})
f = case("model-bad-json", ON_MODEL, 2, "is not valid JSON", model={})
(f / "model").mkdir(); (f / "model/model_index.json").write_text("{ not json")
case("model-missing-vae", ON_MODEL, 2, "missing its 'vae'", model={"remove": ["vae"]})
case("model-no-weights", ON_MODEL, 2, "holds no weights file", model={"remove": ["unet/diffusion_pytorch_model.safetensors"]})
f = case("model-pickle-only", ON_MODEL, 2, "--allow-pickle", model={"remove": ["unet/diffusion_pytorch_model.safetensors"]})
(f / "model/unet").mkdir(parents=True); (f / "model/unet/diffusion_pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
case("model-truncated-weights", ON_MODEL, 2, "diffusion_pytorch_model.safetensors is damaged or truncated",
     model={"truncate": "unet/diffusion_pytorch_model.safetensors"})
f = case("model-unknown-scheduler", ON_MODEL, 2, "could not load model folder", model={})
(f / "model").mkdir(); (f / "model/model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                                         "scheduler": ["diffusers", "NoSuchScheduler"]}))
f = case("model-unknown-family", ON_MODEL, 2, "a model family subjectgen does not support; supported: Stable Diffusion",
         model={})
(f / "model").mkdir(); (f / "model/model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
f = case("model-sdxl-refiner", ON_MODEL, 2, "is the SDXL refiner", model={})
(f / "model").mkdir(); (f / "model/model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLImg2ImgPipeline"}))
f = case("model-inpainting", ON_MODEL, 2, "is an inpainting model", model={})
(f / "model").mkdir(); (f / "model/model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline"}))
f = case("model-single-file-not-a-checkpoint", ["train", "lora", "--model", "{case}/weights.txt", "--subject", "{dog}",
                                                "--class", "dog", "--out", "{tmp}/run"], 2, "expected a .safetensors")
(f / "weights.txt").write_text("nothing")

# --- run folders (overlays on a finished tiny LoRA run) -------------------------------------------------
case("run-missing", ["generate", "{tmp}/nowhere", "a {subject}", "--out", "{tmp}/images"], 2, "no run folder at")
case("run-unfinished", GENERATE, 2, "not a finished run", run={"remove": ["subject.json"]})
f = case("run-manifest-not-json", GENERATE, 2, "is not valid JSON", run={})
(f / "run").mkdir(); (f / "run/subject.json").write_text("{")
case("run-unknown-method", GENERATE, 2, "unknown method", run={"manifest": {"method": "hypernetwork"}})
case("run-base-model-gone", GENERATE, 2, "no such folder or file", run={"manifest": {"model": "/nowhere/model"}})
case("run-lora-weights-missing", GENERATE, 2, "pytorch_lora_weights.safetensors",
     run={"remove": ["pytorch_lora_weights.safetensors"]})
case("run-lora-weights-truncated", GENERATE, 2, "pytorch_lora_weights.safetensors",
     run={"truncate": "pytorch_lora_weights.safetensors"})
case("run-lora-scale-on-model", ["generate", "{tiny}", "a dog", "--lora-scale", "0.5", "--out", "{tmp}/images"], 2,
     "--lora-scale applies to LoRA run folders")
case("run-resume-other-settings", ["train", "lora", "--model", "{tiny}", "--subject", "{dog}", "--class", "dog",
                                   "--out", "{run}", "--quiet", "--steps", "1", "--rank", "8", "--resume"], 2,
     "different settings", run={"remove": ["subject.json"]})
case("run-finished-needs-overwrite", ["train", "lora", "--model", "{tiny}", "--subject", "{dog}", "--class", "dog",
                                      "--out", "{run}", "--quiet", "--steps", "1"], 2, "already holds this finished run",
     run={})
case("run-good-generates", GENERATE, 0, run={})

# --- bench folders --------------------------------------------------------------------------------------
f = case("bench-report-not-a-bench", ["report", "{case}/folder"], 2, "holds no benchmark")
(f / "folder").mkdir(); (f / "folder/notes.txt").write_text("x")
f = case("bench-runs-from-not-a-bench", ["bench", "--out", "{tmp}/b", "--model", "{tiny}", "--subjects", "dog",
                                         "--runs-from", "{case}/folder", "--dino", "{dino}", "--clip", "{clip}"], 2,
         "is not a bench folder")
(f / "folder").mkdir()
case("bench-unknown-subject", ["bench", "--out", "{tmp}/b", "--model", "{tiny}", "--subjects", "unicorn",
                               "--dino", "{dino}", "--clip", "{clip}"], 2, "unicorn not in")
case("bench-unknown-method", ["bench", "--out", "{tmp}/b", "--model", "{tiny}", "--methods", "lora,magic",
                              "--dino", "{dino}", "--clip", "{clip}"], 2, "unknown magic")
case("bench-methods-empty", ["bench", "--out", "{tmp}/b", "--model", "{tiny}", "--methods", "", "--dino", "{dino}",
                            "--clip", "{clip}"], 2, "--methods '' names nothing")
case("bench-subjects-empty", ["bench", "--out", "{tmp}/b", "--model", "{tiny}", "--subjects", " , ",
                             "--dino", "{dino}", "--clip", "{clip}"], 2, "--subjects ' , ' names nothing")
case("bench-dino-missing", ["bench", "--out", "{tmp}/b", "--model", "{tiny}", "--subjects", "dog", "--methods", "lora",
                            "--dino", "{tmp}/no-dino", "--clip", "{clip}"], 2, "could not load evaluator models")

# --- round two (issue 36): outputs, draws, words, farms, PromptNets -----------------------------------------
f = case("world-reserved-out-users-folder", ["world", "reserved", "--count", "1", "--out", "{case}/mine",
                                             "--overwrite"], 2, "holds files subjectgen did not write")
(f / "mine").mkdir(); (f / "mine/thesis.txt").write_text("years of work")
case("world-reserved-count-too-large", ["world", "reserved", "--count", "100000"], 2, "ask for at most")
case("world-reserved-classes-empty", ["world", "reserved", "--classes", ""], 2, "--classes '' names nothing")
case("farm-count-too-large", ["apprentice", "experts", "--count", "1300", "--out", "{tmp}/farm"], 2,
     "holds only 34 rabbit subjects")
f = case("generate-out-is-a-file", GENERATE[:-1] + ["{case}/note.txt"], 2, "is a file", run={})
(f / "note.txt").write_text("mine")
case("token-already-a-word", ["train", "textual-inversion", "--model", "{tiny}", "--subject", "{dog}", "--class", "dog",
                              "--token", "teapot", "--out", "{tmp}/run", "--quiet", "--steps", "1"], 2,
     "token 'teapot' is already a word")  # CLIP's vocab holds 'teapot</w>' only, which add_tokens does not see
PROFUSION = ["train", "profusion", "--model", "{tiny}", "--subject", "{dog}", "--class", "dog", "--out", "{tmp}/run",
             "--quiet", "--steps", "1", "--promptnet", "{case}/promptnet"]
f = case("promptnet-config-not-json", PROFUSION, 2, "config.json is not valid JSON")
(f / "promptnet").mkdir(); (f / "promptnet/config.json").write_text("{")
f = case("promptnet-config-not-a-promptnet", PROFUSION, 2, "is not a PromptNet's config")
(f / "promptnet").mkdir(); (f / "promptnet/config.json").write_text(json.dumps({"_class_name": "PromptNet"}))
f = case("promptnet-truncated-weights", PROFUSION, 2, "damaged or truncated")
fits_tiny = {"_class_name": "PromptNet", "unet_config": {"block_out_channels": [32, 64], "cross_attention_dim": 32},
             "text_width": 32}
(f / "promptnet").mkdir(); (f / "promptnet/config.json").write_text(json.dumps(fits_tiny))
(f / "promptnet/diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
BUILTIN_FARM = {"model": "builtin", "count": 1}
f = case("filter-tau-nan", ["apprentice", "filter", "{case}/farm", "--tau-t", "nan"], 2, "must be a finite number")
(f / "farm").mkdir()
f = case("farm-expert-json-damaged", ["apprentice", "filter", "{case}/farm"], 2, "expert.json is not valid JSON")
(f / "farm/experts/dog_00000").mkdir(parents=True); (f / "farm/farm.json").write_text(json.dumps(BUILTIN_FARM))
(f / "farm/experts/dog_00000/expert.json").write_text('{"images": [')
f = case("farm-json-damaged", ["apprentice", "train", "{case}/farm", "--objective", "reconstruction", "--out",
                               "{tmp}/app", "--quiet"], 2, "farm.json is not valid JSON")
(f / "farm/experts/dog_00000").mkdir(parents=True); (f / "farm/farm.json").write_text("{")
(f / "farm/experts/dog_00000/expert.json").write_text("{}")
f = case("farm-out-is-a-file", ["apprentice", "experts", "--count", "1", "--out", "{case}/note.txt", "--quiet"], 2,
         "is a file")
(f / "note.txt").write_text("mine")
f = case("farm-cluster-of-one-photo", ["apprentice", "experts", "--clusters", "{case}/bench", "--out", "{tmp}/farm",
                                       "--quiet"], 2, "subject dog has 1 photo; each cluster needs 3 or more")
photo(f / "bench/dog/00.png")
(f / "bench/prompts_and_classes.txt").write_text((ROOT.parents[1] / "src/subjectgen/assets/demo/prompts_and_classes.txt")
                                                 .read_text())

# --- round two, the audit: records that are valid JSON but lack a key, the bench's and a run's own records, a farm's
# images, a manifest naming another method, --out a file
EXPERT_RECORD = {"class": "dog", "images": ["images/p00-0.png"], "prompts": ["a dog on the beach"],
                 "train_seconds": 1.0, "generate_seconds": 1.0}


def farm(folder: Path, expert: dict | None = EXPERT_RECORD, image: bytes | None = None, settings=BUILTIN_FARM) -> None:
    """A farm of one expert (a dog): farm.json, the expert's record, 3 photos and its image (None: none)."""
    root = folder / "farm/experts/dog_00000"
    root.mkdir(parents=True)
    (folder / "farm/farm.json").write_text(json.dumps(settings))
    if expert is not None:
        (root / "expert.json").write_text(json.dumps(expert))
    for i in range(3):
        photo(root / f"photos/{i:02d}.png", colour=(200, 40 + 40 * i, 40))
    if image is not None:
        (root / "images").mkdir()
        (root / "images/p00-0.png").write_bytes(image)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (30, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


farm(case("farm-json-lacks-model", ["apprentice", "filter", "{case}/farm"], 2, "farm.json lacks 'model'"),
     settings={"count": 1})
farm(case("farm-expert-json-lacks-images", ["apprentice", "filter", "{case}/farm"], 2, "expert.json lacks 'images'"),
     expert={"class": "dog"})
farm(case("farm-image-truncated", ["apprentice", "filter", "{case}/farm"], 2, "p00-0.png is damaged or truncated"),
     image=png_bytes()[:60])
farm(case("farm-image-missing", ["apprentice", "filter", "{case}/farm"], 2, "p00-0.png is missing"))
f = case("farm-filter-json-damaged", ["apprentice", "train", "{case}/farm", "--out", "{tmp}/app", "--steps", "1",
                                      "--quiet"], 2, "filter.json is not valid JSON")
farm(f, image=png_bytes())
(f / "farm/filter.json").write_text('{"images": [')
case("run-names-another-method", GENERATE, 2, "says the method is textual-inversion, but",
     run={"manifest": {"method": "textual-inversion"}})
f = case("run-record-damaged", ["train", "lora", "--model", "{tiny}", "--subject", "{dog}", "--class", "dog", "--out",
                                "{run}", "--quiet", "--steps", "1", "--resume"], 2, "run.json is not valid JSON", run={})
(f / "run").mkdir(); (f / "run/run.json").write_text('{"method": "lo')
f = case("bench-json-damaged", ["report", "{case}/folder"], 2, "bench.json is not valid JSON")
(f / "folder").mkdir(); (f / "folder/bench.json").write_text("{")
f = case("bench-scores-json-damaged", ["report", "{case}/folder"], 2, "scores.json is not valid JSON")
(f / "folder/pairs/lora/dog").mkdir(parents=True); (f / "folder/bench.json").write_text("{}")
(f / "folder/pairs/lora/dog/scores.json").write_text('{"dino": 0.')
f = case("world-reserved-out-is-a-file", ["world", "reserved", "--count", "1", "--out", "{case}/note.txt"], 2,
         "is a file")
(f / "note.txt").write_text("mine")
f = case("bench-out-is-a-file", ["bench", "--out", "{case}/note.txt", "--model", "{tiny}", "--subjects", "dog",
                                 "--methods", "lora", "--dino", "{dino}", "--clip", "{clip}"], 2, "is a file")
(f / "note.txt").write_text("mine")
print(f"{len([p for p in ROOT.iterdir() if (p / 'case.json').is_file()])} cases")
