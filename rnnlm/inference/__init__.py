"""Inference: text generation and what makes its steps fast and its draws exact.

    generation.py     stream_ids / generate_ids: prime on the prompt, then step and draw word by word (torch only),
                      never drawing the banned ids (<pad>, <unk>)
    text.py           stream / generate: the same from a text prompt to words and texts
    distribution.py   the top next words and their probabilities at several temperatures (table, bar chart)
    sampling.py       Sampling (checked settings), the top-k / top-p filter, the inverse-CDF draw
    precision.py      choose_generation_step: which copy of the output layer a step reads (fp32, fp16, int8), the
                      fp32 mat-vecs' library (torch or numpy), threads: a StepPlan
    stepper.py        TorchStepper: the model stepped one word at a time with weights laid out once (torch's or
                      numpy's products); prime
    fp16.py           fbgemm's packed fp16 output layer
    int8_envelope.py  exact sampling from an int8 output layer (rejection against a proven bound)

What differs between the torch and triton backends (the step and the draw) is in rnnlm.backends.
"""
