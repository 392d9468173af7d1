"""The default demo: SupAP on scikit-learn's digits, stratified 50/50 split.

Train on one half of the images, retrieve within the other (query = gallery, self excluded).
Measured (README): raw pixels R@1 0.98 / MAP@R 0.54; the trained MLP R@1 0.99 / MAP@R ~0.92.
100 steps: in a 300-step run evaluated every 25 steps, MAP@R was 0.876 / 0.910 / 0.920 / 0.924
at steps 25 / 50 / 75 / 100 and 0.927 at 300, with the training loss about 0 from step ~90 on
-- the last 200 steps changed almost nothing.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.dataset.protocol = "stratified"
    c.loss.name = "supap"
    c.num_steps = 100
    c.eval_every = 25
    return c
