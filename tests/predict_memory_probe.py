"""Peak-memory probe of Mask R-CNN prediction on large photos (run by tests/test_photos.py, and by
hand: ``python tests/predict_memory_probe.py save M.keras``, then ``... library M.keras 3000 4000``
or ``... photo OUT.png 3000 4000``, then ``python -m segkeras predict --model M.keras OUT.png``).

``measure(command, limit_bytes)`` runs a command under an address-space limit (RLIMIT_AS) in a
small wrapper process and returns its exit status and peak resident memory (ru_maxrss of the
wrapper's only child), so the numbers belong to that command alone.
"""

from __future__ import annotations

import json
import subprocess
import sys

WRAPPER = """
import json, resource, subprocess, sys
limit, command = int(sys.argv[1]), json.loads(sys.argv[2])
def limited():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
done = subprocess.run(command, preexec_fn=limited, capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": done.returncode, "peak_bytes": peak, "stderr": done.stderr[-2000:],
                  "stdout": done.stdout[-2000:]}))
"""


def measure(command: list[str], limit_bytes: int, env=None, cwd=None,
            timeout: float = 900) -> dict:
    """``{"rc", "peak_bytes", "stdout", "stderr"}`` of ``command`` run under RLIMIT_AS."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, str(limit_bytes), json.dumps(command)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
                          check=True)
    return json.loads(done.stdout)


def photo(height: int, width: int):
    """A smooth synthetic RGB photo (uint8) with a few bright discs: it compresses well as PNG."""
    import numpy as np

    rows, cols = np.ogrid[:height, :width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (rows * 255 // max(height - 1, 1)).astype(np.uint8)
    image[..., 1] = (cols * 255 // max(width - 1, 1)).astype(np.uint8)
    image[..., 2] = 60
    for k in range(4):
        cy, cx, r = height * (k + 1) // 5, width * (4 - k) // 5, min(height, width) // 8
        image[(rows - cy) ** 2 + (cols - cx) ** 2 < r * r] = (250, 250, 250)
    return image


def tiny_model():
    """A random-weight Mask R-CNN at its default CPU input (256x256) with small heads and the
    default 100 detection slots: untrained, it keeps many low-scoring detections."""
    import keras

    from segkeras.models.mask_rcnn import mask_rcnn

    keras.utils.set_random_seed(0)
    return mask_rcnn(4, "mobilenetv2", weights=None, input_shape=(256, 256, 3), seed=0,
                     fpn_channels=32, box_head_units=64, mask_head_channels=32)


def main(argv: list[str]) -> None:
    mode, path = argv[0], argv[1]
    if mode == "save":
        tiny_model().save(path)
    elif mode == "photo":
        from segkeras.data.images import write_png

        write_png(path, photo(int(argv[2]), int(argv[3])))
    elif mode == "library":  # predict_instances on one photo: "bool" masks, or "rle"
        import keras

        from segkeras.models.mask_rcnn import predict_instances

        model = keras.saving.load_model(path)
        options = {"mask_format": argv[4]} if len(argv) > 4 else {}
        (found,) = predict_instances(model, [photo(int(argv[2]), int(argv[3]))], **options)
        print(json.dumps({"detections": len(found["scores"])}))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
