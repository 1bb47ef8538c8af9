#!/usr/bin/python3
"""Generates the test models for the engine integration tests.

Run with /usr/bin/python3 (the interpreter that has torch, torchvision and onnx):

    /usr/bin/python3 tests/models/make_models.py OUTPUT_DIR

Writes, for resnet18 and mobilenet_v3_small (torchvision architectures, random weights from a
fixed seed; no network access, no pretrained weights):

    <name>.pt        TorchScript (torch.jit.trace), loaded by the "torchscript" engine
    <name>.onnx      ONNX, loaded by the "onnx" (OpenCV DNN) engine
    <file>.needles   for each model file: 64-byte samples from the middle of a few weight
                     tensors (the largest, a median one, a small one, the final linear layer), as
                     stored verbatim in that file, concatenated; <file>.needles.txt names them, one
                     per line. The memory-hygiene tests search process memory for them.
    input.npy        a fixed 1x3x224x224 float32 input
    tiny.pt          TorchScript: a 16 -> 4 linear layer whose weights hold a 64-byte marker
                     (tiny.pt.marker), for the agent's latency benchmark and for the tests that
                     look for the model's plaintext on disk and in the agent's files
    tiny_input.npy   a fixed 1x16 float32 input for it

The outputs are deterministic for a given torch version. Existing files are kept unless
--force is given, so a ctest fixture can call this on every run cheaply.
"""

import argparse
import io
import os
import sys
import tempfile

MODELS = ("resnet18", "mobilenet_v3_small")
# OpenCV 4.6's ONNX importer is tested against opsets up to 13; 11 covers everything these
# models need (HardSigmoid/HardSwish are decomposed by the exporter at this opset).
ONNX_OPSET = 11
NEEDLE_BYTES = 64


def outputs_for(out_dir):
    files = ["input.npy", "tiny.pt", "tiny.pt.marker", "tiny_input.npy"]
    for name in MODELS:
        for ext in (".pt", ".onnx"):
            files += [name + ext, name + ext + ".needles", name + ext + ".needles.txt"]
    return [os.path.join(out_dir, f) for f in files]


def atomic_write(path, write_fn):
    """Writes via a temporary file in the same directory so a crash never leaves a half file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def remove_identity_nodes(model):
    """Removes Identity nodes, which OpenCV 4.6 rejects when they alias an initializer.

    Every consumer (and graph output) of an Identity's output is rewired to the Identity's input.
    """
    graph = model.graph
    rename = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity":
            rename[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    if not rename:
        return 0

    def resolve(name):
        seen = set()
        while name in rename and name not in seen:
            seen.add(name)
            name = rename[name]
        return name

    graph_outputs = {o.name for o in graph.output}
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
    for out in graph.output:
        src = resolve(out.name)
        if src != out.name:
            # A graph output produced by an Identity: rename the producer's output instead.
            for node in kept:
                for i, name in enumerate(node.output):
                    if name == src:
                        node.output[i] = out.name
                for i, name in enumerate(node.input):
                    if name == src and src not in graph_outputs:
                        node.input[i] = out.name
    del graph.node[:]
    graph.node.extend(kept)
    return len(rename)


def final_linear_weight_name(model):
    import torch

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return names[-1] + ".weight"


def write_needles(model_path, tensors, final_name):
    """Samples NEEDLE_BYTES from the middle of a few tensors that appear verbatim, once, in the file.

    tensors: (name, raw little-endian bytes). Picks the largest, the median and the smallest
    (of at least 1 KiB) tensor, and the final linear layer's weight (the exporter keeps its
    parameter name, e.g. "fc.weight", for the ONNX initializer as well).
    """
    with open(model_path, "rb") as f:
        blob = f.read()

    def sample(b):
        middle = len(b) // 2 // 4 * 4
        return b[middle:middle + NEEDLE_BYTES]

    def distinctive(b):
        # Constant tensors (batch-norm ones and zeros) would match all over memory.
        words = sample(b)
        return len({words[i:i + 4] for i in range(0, len(words), 4)}) == NEEDLE_BYTES // 4

    candidates = sorted(((n, b) for n, b in tensors if len(b) >= 1024 and distinctive(b)),
                        key=lambda t: len(t[1]))
    picks = []
    if candidates:
        picks = [candidates[-1], candidates[len(candidates) // 2], candidates[0]]
    for n, b in tensors:
        if n == final_name:
            picks.append((n, b))
    chosen, names = [], []
    for n, b in picks:
        needle = sample(b)
        if len(needle) != NEEDLE_BYTES or needle in chosen or blob.count(needle) != 1:
            continue
        chosen.append(needle)
        names.append(f"{n} ({len(b)} bytes)")
    atomic_write(model_path + ".needles", lambda p: write_bytes(p, b"".join(chosen)))
    atomic_write(model_path + ".needles.txt",
                 lambda p: write_bytes(p, "".join(x + "\n" for x in names).encode()))


def make(out_dir):
    import numpy as np
    import onnx
    import onnx.numpy_helper
    import torch
    import torchvision

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    torch.manual_seed(0)
    example = torch.randn(1, 3, 224, 224, dtype=torch.float32)
    def save_input(path):
        with open(path, "wb") as f:
            np.save(f, example.numpy(), allow_pickle=False)

    atomic_write(os.path.join(out_dir, "input.npy"), save_input)

    for name in MODELS:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()

        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        # Saved through a buffer: given a path, torch names the archive's root folder after the
        # (temporary) file name, which would make the bytes differ from run to run.
        archive = io.BytesIO()
        torch.jit.save(traced, archive)
        atomic_write(os.path.join(out_dir, name + ".pt"),
                     lambda p, data=archive.getvalue(): write_bytes(p, data))

        def export_onnx(path, model=model):
            with torch.no_grad():
                torch.onnx.export(model, example, path, opset_version=ONNX_OPSET,
                                  do_constant_folding=True, input_names=["input"],
                                  output_names=["logits"])
            proto = onnx.load(path)
            removed = remove_identity_nodes(proto)
            onnx.checker.check_model(proto)
            onnx.save(proto, path)
            if removed:
                print(f"{name}.onnx: removed {removed} Identity nodes")

        atomic_write(os.path.join(out_dir, name + ".onnx"), export_onnx)

        final_name = final_linear_weight_name(model)
        torch_tensors = [(k, v.detach().contiguous().numpy().tobytes())
                         for k, v in model.state_dict().items()]
        onnx_proto = onnx.load(os.path.join(out_dir, name + ".onnx"))
        onnx_tensors = [(t.name, onnx.numpy_helper.to_array(t).tobytes())
                        for t in onnx_proto.graph.initializer]
        for ext, tensors in ((".pt", torch_tensors), (".onnx", onnx_tensors)):
            path = os.path.join(out_dir, name + ext)
            write_needles(path, tensors, final_name)
        print(f"wrote {name}.pt, {name}.onnx and their needles")


# 64 bytes no other file holds: the tiny model's first weights are these bytes read as floats.
TINY_MARKER = b"CUSTODY-PLAINTEXT-MARKER:tiny-model-weights-must-never-reach-disk"[:64]


def make_tiny(out_dir):
    import numpy as np
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.linear(x)

    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        marker = np.frombuffer(TINY_MARKER, dtype=np.float32).copy()
        model.linear.weight.view(-1)[: marker.size] = torch.from_numpy(marker)
    example = torch.randn(1, 16, dtype=torch.float32)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    archive = io.BytesIO()
    torch.jit.save(traced, archive)
    data = archive.getvalue()
    if TINY_MARKER not in data:
        raise SystemExit("tiny.pt does not hold its marker verbatim")
    atomic_write(os.path.join(out_dir, "tiny.pt"), lambda p: write_bytes(p, data))
    atomic_write(os.path.join(out_dir, "tiny.pt.marker"), lambda p: write_bytes(p, TINY_MARKER))

    def save_input(path):
        with open(path, "wb") as f:
            np.save(f, example.numpy(), allow_pickle=False)

    atomic_write(os.path.join(out_dir, "tiny_input.npy"), save_input)
    print("wrote tiny.pt, its marker and tiny_input.npy")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--force", action="store_true", help="regenerate even if present")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    if not args.force and all(os.path.isfile(p) for p in outputs_for(args.out_dir)):
        print("models present in", args.out_dir, "(use --force to regenerate)")
        return 0
    make(args.out_dir)
    make_tiny(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
