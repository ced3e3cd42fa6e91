"""The embedded text task as a data set: word problems of the synthetic arithmetic world the embedded LM is
pretrained in (:mod:`loralab.synthetic.arithmetic`, where the world and both of its texts are defined).

Configs name ``loralab.data.arithmetic.word_problems``
(``conf/dataset/arith_shift.yaml``, ``conf/eval/arith_shift.yaml``).
"""
from loralab.synthetic.arithmetic import word_problems

__all__ = ["word_problems"]
