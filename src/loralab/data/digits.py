"""The embedded vision task as a data set: scikit-learn's digits 5–9, from the synthetic digits world the
embedded ViT is pretrained in (digits 0–4; :mod:`loralab.synthetic.digits` defines both).

Configs name ``loralab.data.digits.digit_records``
(``conf/dataset/digits_shift.yaml``, ``conf/eval/digits_shift.yaml``).
"""
from loralab.synthetic.digits import collate_images, digit_records

__all__ = ["collate_images", "digit_records"]
