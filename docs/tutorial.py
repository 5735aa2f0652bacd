"""infinet in ten steps: describe a network once, get its finite module and its exact infinite-width kernels,
predict with them, and check them against finite networks. Runs offline in a few seconds."""

import torch

import infinet as inf
from infinet.predict import gp_inference, gradient_descent_mse

# 1. One description, two meanings.
net = inf.serial(inf.Dense(512, w_std=1.5, b_std=0.05), inf.Relu(), inf.Dense(1, w_std=1.5, b_std=0.05))

# 2. Data: a smooth function on the sphere.
gen = torch.Generator().manual_seed(0)
x_train = torch.randn(40, 5, generator=gen, dtype=torch.float64)
x_test = torch.randn(10, 5, generator=gen, dtype=torch.float64)
y_train = torch.sin(x_train.sum(1, keepdim=True))

# 3. Exact kernels (float64, tiled).
k_train = net.kernel(x_train)
k_test = net.kernel(x_test, x_train)
print("NTK of the first two training points:", float(k_train.ntk[0, 1]))

# 4. Predictions of infinitely wide networks: the NNGP posterior and gradient descent to convergence.
nngp_mean = gp_inference(k_train, k_test, y_train, diag_reg=1e-4).mean
ntk_mean = gradient_descent_mse(k_train, k_test, y_train, t=float("inf"), diag_reg=1e-4)

# 5. The finite network the kernels describe.
model = net.build(5, seed=0)
print("finite outputs:", model(x_test.float())[:3, 0])

# 6. Monte Carlo of finite networks converges to the kernel.
mc = inf.monte_carlo_kernel(net, x_test[:4], n_samples=16, seed=0)
print("NNGP exact vs Monte Carlo:", float(net.kernel(x_test[:4]).nngp[0, 1]), float(mc.nngp[0, 1]),
      "+-", float(mc.nngp_stderr[0, 1]))

# 7. Your own PyTorch model.
torch_model = torch.nn.Sequential(torch.nn.Linear(5, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1))
arch = inf.from_torch(torch_model)
print("from_torch:", arch)

# 8. Mean-field theory of the same activation.
print("tanh edge of chaos at b_std = 0.1:", inf.meanfield.critical_w_std("tanh", b_std=0.1))
