"""Recipe component ``sliding_window``: our prediction against nnU-Net 2.8.1's predictor, same weights.

Our side (project venv) plans a small network with our planner (patch (16, 24, 24) at spacing
(2, 1, 1): three stages, kernels (1, 3, 3) then (3, 3, 3), 4 classes), makes two weight sets
(``random``: He init; ``trained``: 40 Adam steps on smooth synthetic images whose classes are
intensity bands, plus a second "fold", the trained weights perturbed by 2 % noise) and three
images whose shapes are not multiples of the patch, one of them smaller than the patch in z,
another in y. ``nnunet_sliding_window.py`` (nnU-Net venv) loads the SAME weights into
dynamic-network-architectures' ``PlainConvUNet`` and runs nnU-Net's own
``nnUNetPredictor.predict_logits_from_preprocessed_data`` (its fold loop around
``predict_sliding_window_return_logits``: padding, tile starts, Gaussian, mirroring over
axes (0, 1, 2), tile step 0.5) on the CPU. It also writes ``compute_steps_for_sliding_window``
for a list of cases and ``compute_gaussian`` of the patch, which we compare with ours.

nnU-Net 2.8.1 accumulates logits in float16 on EVERY device (``predicted_logits`` and
``n_predictions`` are ``torch.half``, its Gaussian is float16), we in float32. Its Gaussian's
far corners (10 exp(-24) ~ 4e-10) underflow in float16 and become the smallest float16
subnormal, so on the image's outer faces, covered by one tile's corner only, its weighted
logits keep 1-2 significant bits: the labels there differ where the logits are close (a
random network: 0.1-0.4 % of the voxels, nearly all on the outer faces). The nnU-Net side
therefore also runs the same call with float32 accumulators (a diagnostic: only the dtype
changes), against which our logits agree to about 1e-6.

``match`` (:data:`MATCH_RULE`): labels (argmax of the logits on the preprocessed grid) agree
on >= 99.9 % of the voxels of every image with the unmodified predictor for the trained
weights, and with the float32-accumulator run for both weight sets (logits within 1e-4); the
tile starts are equal; the Gaussian agrees to 1e-6 (relative).

Run alone: ``python benchmarks/conformance/recipe/sliding_window.py NNUNET_PYTHON [--workdir DIR]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import (fp16_exact, load_json, load_npz, log, protocol_compare, result, run_standalone,
                    save_json, save_npz)

PATCH_REQUESTED = [16, 24, 24]
SPACING = [2.0, 1.0, 1.0]
CLASSES = 4
#: z smaller than the patch; y smaller than the patch; none a multiple of the patch
SHAPES = [(13, 50, 29), (35, 21, 46), (20, 37, 30)]
STEP = 0.5
#: (image, tile, step) cases for nnU-Net's compute_steps_for_sliding_window
STEP_CASES = [((110,), (64,), 0.5), ((9,), (4,), 0.75), ((50,), (16,), 1.0), ((64,), (64,), 0.5),
              ((40, 57, 30), (16, 24, 24), 0.5), ((150, 558, 558), (64, 160, 160), 0.5),
              ((97, 401, 373), (64, 352, 352), 0.5), ((33, 47, 81), (32, 32, 32), 0.33)]
#: the fixture's variant (tests/fixtures/nnunet/sliding_window/): a smaller patch and network,
#: images of the same kinds (smaller than the patch in z, in y; no multiple of it)
SMALL = {"patch": [8, 16, 16], "features": (4, 8), "shapes": [(7, 40, 37), (20, 13, 40), (19, 37, 30)]}
AGREEMENT_NEEDED = 0.999
MATCH_RULE = ("labels agree >= 0.999 with nnU-Net's unmodified predictor on every image for the trained weights, "
              "and >= 0.999 with logits within 1e-4 against its float32-accumulator run for every weight set; "
              "tile starts equal; Gaussian within 1e-6 relative")


def smooth_image(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed noise, z-scored: a float32 'preprocessed image' with structure."""
    from scipy.ndimage import gaussian_filter

    img = gaussian_filter(rng.standard_normal(shape), 2.0)
    return ((img - img.mean()) / img.std()).astype(np.float32)


def bands(image: np.ndarray) -> np.ndarray:
    """Classes 0..CLASSES-1 as intensity bands (quantiles) of a smooth image."""
    edges = np.quantile(image, np.linspace(0, 1, CLASSES + 1)[1:-1])
    return np.digitize(image, edges).astype(np.int64)


def make_weights(topo: dict, rng: np.random.Generator):
    """(random network, trained network, perturbed copy of the trained one), our PlainUNet."""
    import torch

    from seggrid.engine.network import PlainUNet

    def net():
        return PlainUNet(CLASSES, topo["features"], topo["kernels"], topo["strides"])

    torch.manual_seed(0)
    random_net = net().eval()
    trained = net()
    opt = torch.optim.Adam(trained.parameters(), 1e-2)
    patch = topo["patch_effective"]
    for _ in range(40):
        x = np.stack([smooth_image(tuple(patch), rng) for _ in range(2)])
        y = torch.from_numpy(np.stack([bands(i) for i in x]))
        loss = torch.nn.functional.cross_entropy(trained(torch.from_numpy(x)[:, None]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    log(f"[sliding_window] trained 40 steps, last cross-entropy {float(loss):.3f}")
    trained.eval()
    perturbed = net()
    perturbed.load_state_dict(trained.state_dict())
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.02 * p.abs().mean() * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return random_net.eval(), trained, perturbed.eval()


def _network(topo: dict, classes: int):
    from seggrid.engine.network import PlainUNet

    return PlainUNet(classes, topo["features"], topo["kernels"], topo["strides"])


def prepare(workdir: Path, small: bool = False) -> None:
    """Plan, train and write the weight sets, the images and setup.json.

    ``small``: :data:`SMALL` (patch, features, shapes); images rounded to float16 values."""
    import torch

    from seggrid.engine.planner import plan_topology

    torch.set_num_threads(2)
    workdir = Path(workdir)
    rng = np.random.default_rng(0)
    base, top = SMALL["features"] if small else (8, 32)
    topo = plan_topology(SMALL["patch"] if small else PATCH_REQUESTED, SPACING, base_features=base, max_features=top)
    random_net, trained, perturbed = make_weights(topo, rng)
    weight_sets = {"random": [random_net], "trained_2folds": [trained, perturbed]}
    images = [smooth_image(s, rng) for s in (SMALL["shapes"] if small else SHAPES)]
    if small:
        images = [fp16_exact(i) for i in images]
    for name, nets in weight_sets.items():
        for f, n in enumerate(nets):
            save_npz(workdir / f"weights_{name}_{f}.npz", **{k: v.numpy() for k, v in n.state_dict().items()})
    save_npz(workdir / "images.npz", **{f"image_{i}": img for i, img in enumerate(images)})
    save_json(workdir / "setup.json", {"topology": topo, "classes": CLASSES, "step": STEP, "step_cases": STEP_CASES,
                                       "weight_sets": {k: len(v) for k, v in weight_sets.items()},
                                       "n_images": len(images)})


def fixture_files(workdir: Path) -> list[str]:
    """The files of a run that make this component's fixture (tests/fixtures/nnunet/sliding_window/)."""
    sets = load_json(Path(workdir) / "setup.json")["weight_sets"]
    return ["setup.json", "images.npz", "nnunet_logits.npz", "nnunet_facts.json",
            *(f"weights_{name}_{f}.npz" for name, n in sets.items() for f in range(n))]


def slim(workdir: Path) -> None:
    """For a fixture: the unmodified (float16) predictor's logits for the random weights dropped
    (reported, not in ``match``); its float32-accumulator logits for every set stay."""
    theirs = load_npz(Path(workdir) / "nnunet_logits.npz")
    save_npz(Path(workdir) / "nnunet_logits.npz", **{k: v for k, v in theirs.items() if not k.startswith("random_")})


def check(workdir: Path) -> dict:
    """Our sliding window with the weights and images of ``workdir`` against nnU-Net's logits there."""
    import torch

    from seggrid.inference.sliding_window import gaussian_importance, sliding_window_logits, tile_starts

    torch.set_num_threads(2)
    workdir = Path(workdir)
    setup = load_json(workdir / "setup.json")
    topo, step_cases = setup["topology"], [tuple(tuple(v) if isinstance(v, list) else v for v in c)
                                           for c in setup["step_cases"]]
    patch = topo["patch_effective"]
    weight_sets = {}
    for name, n in setup["weight_sets"].items():
        nets = []
        for f in range(n):
            net = _network(topo, setup["classes"])
            state = load_npz(workdir / f"weights_{name}_{f}.npz")
            net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
            nets.append(net.eval())
        weight_sets[name] = nets
    arrays = load_npz(workdir / "images.npz")
    images = [arrays[f"image_{i}"] for i in range(setup["n_images"])]
    theirs = load_npz(workdir / "nnunet_logits.npz")
    facts = load_json(workdir / "nnunet_facts.json")

    per_set = {}
    for name, nets in weight_sets.items():
        rows = {"label_agreement": [], "max_abs_logit_diff": [], "label_agreement_inside": [],
                "disagreements_on_outer_face": [], "fp32_label_agreement": [], "fp32_max_abs_logit_diff": []}
        for i, img in enumerate(images):
            ours = sliding_window_logits(nets, img, patch, setup["step"], 8, "cpu", "fp32").numpy()
            labels = ours.argmax(0)
            for key, prefix in (("nnunet", ""), ("fp32", "fp32_")):
                if f"{prefix}{name}_{i}" not in theirs:         # dropped from a fixture (slim)
                    rows[f"{prefix}label_agreement"].append(None)
                    rows[f"{prefix}max_abs_logit_diff"].append(None)
                    continue
                ref = theirs[f"{prefix}{name}_{i}"].astype(np.float32)
                agree = labels == ref.argmax(0)
                rows[f"{prefix}label_agreement"].append(float(agree.mean()))
                rows[f"{prefix}max_abs_logit_diff"].append(float(np.abs(ours - ref).max()))
                if key == "nnunet":
                    inside = tuple(slice(1, -1) for _ in agree.shape)
                    rows["label_agreement_inside"].append(float(agree[inside].mean()))
                    rows["disagreements_on_outer_face"].append(int((~agree).sum() - (~agree[inside]).sum()))
                    rows.setdefault("disagreements", []).append(int((~agree).sum()))
        per_set[name] = rows
        log(f"[sliding_window] {name}: {rows}")
    trained_ok = min(per_set["trained_2folds"]["label_agreement"]) >= AGREEMENT_NEEDED
    fp32_ok = all(min(r["fp32_label_agreement"]) >= AGREEMENT_NEEDED and max(r["fp32_max_abs_logit_diff"]) <= 1e-4
                  for r in per_set.values())
    out = {"label_agreement": [a for r in per_set.values() for a in r["label_agreement"]],
           "max_abs_logit_diff": [d for r in per_set.values() for d in r["max_abs_logit_diff"]],
           "fp32_label_agreement": [a for r in per_set.values() for a in r["fp32_label_agreement"]],
           "fp32_max_abs_logit_diff": [d for r in per_set.values() for d in r["fp32_max_abs_logit_diff"]],
           "rows": [f"{name} image {i}" for name in per_set for i in range(len(images))],
           "shapes": [list(i.shape) for i in images]}

    starts_equal = all(tile_starts(img, tile, step) == facts["steps"][k]
                       for k, (img, tile, step) in enumerate(step_cases))
    ours_g = gaussian_importance(patch, dtype=torch.float32).numpy()
    theirs_g = np.asarray(facts["gaussian_float32"], dtype=np.float32).reshape(ours_g.shape)
    gaussian_rel = float(np.abs(ours_g - theirs_g).max() / np.abs(theirs_g).max())
    match = trained_ok and fp32_ok and starts_equal and gaussian_rel <= 1e-6
    return result("sliding_window", match, **out, per_weight_set=per_set, match_rule=MATCH_RULE, patch=patch,
                  classes=setup["classes"],
                  tile_step=setup["step"], mirroring="8 (all subsets of z, y, x)", agreement_needed=AGREEMENT_NEEDED,
                  tile_starts_equal=starts_equal, tile_start_cases=len(step_cases),
                  gaussian_max_rel_diff=gaussian_rel, nnunet_accumulator=facts["accumulator_dtype"],
                  ours="seggrid.inference.sliding_window.sliding_window_logits (float32)",
                  nnunet=facts["called"])


compare = protocol_compare(prepare, check, __file__, "")


if __name__ == "__main__":
    run_standalone(compare, "sliding_window")
