"""Train segkeras' Mask R-CNN on the multi-scale shapes within a CPU budget: the feature pyramid
against the single-level head, COCO AP by object size.

    python bench/s8_mask_rcnn_multiscale.py --pyramid [--minutes 60] [--seed 0] [--save F.keras]
    python bench/s8_mask_rcnn_multiscale.py [--minutes 60] [--seed 0]       # single level

The data: ``shapes.generate_multiscale`` (images of 256-512 px a side, varied aspect ratio,
objects of about 6-250 px: COCO's small, medium and large are all common); held-out images from
another seed, the same for every run. Images keep their aspect ratio in training and at test time
(``mask_rcnn_dataset(..., keep_aspect=True)``, ``predict_instances``), padded to a square input of
``--image-size``. The model: MobileNetV2 from random initialisation with heads sized for a CPU
(as section 8's), either the pyramid (P2-P6, anchors 16-256, one per level, RoIs on the level of
eq. 1) or the single stride-8 map (anchors 16-128). Training as bench/s8_mask_rcnn_train.py: Adam
with a cosine over the CPU budget, the global gradient norm clipped at 10, one thread by default.
Evaluation: box and mask AP, AP50, AP75 and AP_S/M/L from predicted boxes. The record goes to
``bench/results/mask_rcnn_multiscale.json`` under ``--key`` (not rendered into BENCHMARKS.md yet).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from s8_mask_rcnn_record import HELD_OUT_SEED, multiscale_arguments, report, save  # noqa: E402
from s8_mask_rcnn_train import Budget, predict  # noqa: E402

from segkeras.data import shapes  # noqa: E402
from segkeras.evaluate.instances import detection_ap  # noqa: E402
from segkeras.models.mask_rcnn import mask_rcnn, mask_rcnn_dataset  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "mask_rcnn_multiscale.json")
ANCHORS = {True: (16, 32, 64, 128, 256), False: (16, 32, 64, 128)}
"""Anchor sizes of the pyramid (one per level P2-P6) and of the single level, for objects of
about 6-250 px."""


def build(num_classes: int, args) -> keras.Model:
    return mask_rcnn(
        num_classes, "mobilenetv2", weights=None,
        input_shape=(args.image_size, args.image_size, 3), pyramid=args.pyramid,
        anchor_sizes=ANCHORS[args.pyramid], fpn_channels=args.fpn_channels,
        box_head_units=args.box_head_units, mask_head_channels=args.mask_head_channels,
        rpn_pre_nms=args.rpn_pre_nms, rpn_post_nms_train=args.rpn_post_nms_train,
        rpn_post_nms_test=args.rpn_post_nms_test, rois_per_image=args.rois_per_image,
        roi_canonical_size=args.roi_canonical_size, roi_sampling_ratio=args.roi_sampling_ratio,
        max_detections=100, seed=args.seed)


def main() -> None:
    parser = multiscale_arguments(__doc__.splitlines()[0], learning_rate=2e-3)
    parser.add_argument("--pyramid", action="store_true", help="P2-P6 (default: single level)")
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--box-head-units", type=int, default=256)
    parser.add_argument("--mask-head-channels", type=int, default=64)
    parser.add_argument("--rpn-pre-nms", type=int, default=1000,
                        help="best anchors before NMS (per level with the pyramid)")
    parser.add_argument("--rpn-post-nms-train", type=int, default=500)
    parser.add_argument("--rpn-post-nms-test", type=int, default=300)
    parser.add_argument("--roi-canonical-size", type=float, default=224.0,
                        help="pyramid: the RoI side eq. 1 puts on P4 (112: one level coarser)")
    parser.add_argument("--roi-sampling-ratio", type=int, default=2,
                        help="RoIAlign samples per bin and axis in the box and mask heads")
    args = parser.parse_args()
    if args.threads and keras.backend.backend() == "tensorflow":  # before TensorFlow runs an op
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)

    train = shapes.generate_multiscale(args.train_images, seed=args.seed)
    held_out = shapes.generate_multiscale(args.val_images, seed=HELD_OUT_SEED)
    dataset = mask_rcnn_dataset(train, args.image_size, args.batch_size, max_instances=16,
                                keep_aspect=True, seed=args.seed)
    model = build(train.num_classes, args)
    budget = Budget(args.minutes * 60, args.learning_rate, args.stop_at)
    model.compile(keras.optimizers.Adam(args.learning_rate, global_clipnorm=10.0),
                  jit_compile=False)
    model.fit(dataset, epochs=1000, callbacks=[budget], verbose=0, shuffle=False)
    cpu_seconds, wall_seconds = budget.spent(), time.perf_counter() - budget.started_wall
    if args.save:
        model.save(args.save)

    detections, inference_cpu, inference_wall = predict(model, held_out.images)
    scores = detection_ap(held_out, detections, by_size=True)
    print(f"{model.name} params={model.count_params():,} pyramid={args.pyramid}")
    record = report(budget.steps, args.batch_size, len(train), cpu_seconds, wall_seconds,
                    scores, len(held_out), inference_cpu, inference_wall,
                    backend=keras.backend.backend(), model=model.name,
                    params=model.count_params(), config=vars(args), losses=budget.history)
    for kind in ("box", "mask"):
        print(f"held-out {kind} AP_S={scores[kind]['AP_S']:.3f} AP_M={scores[kind]['AP_M']:.3f} "
              f"AP_L={scores[kind]['AP_L']:.3f}")
    save(args.key or ("pyramid" if args.pyramid else "single") + f" seed={args.seed}", record,
         RESULTS)


if __name__ == "__main__":
    main()
