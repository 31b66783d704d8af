"""Parameter-tensor shape lists of the models the benchmarks use."""

FMNIST_CNN = [(16, 1, 5, 5), (16,), (16,), (16,), (32, 16, 5, 5), (32,), (32,), (32,), (10, 1568), (10,)]

# The authors' Cifar10CNN: six conv3x3 + BatchNorm layers, then 2048 -> 128 -> 10.
CIFAR_CNN = []
for c_in, c_out in [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]:
    CIFAR_CNN += [(c_out, c_in, 3, 3), (c_out,), (c_out,), (c_out,)]
CIFAR_CNN += [(128, 2048), (128,), (10, 128), (10,)]


def _resnet18():
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    c_in = 64
    for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        for block in range(2):
            first_in = c_in if block == 0 else c_out
            shapes += [(c_out, first_in, 3, 3), (c_out,), (c_out,), (c_out, c_out, 3, 3), (c_out,), (c_out,)]
            if block == 0 and (stride != 1 or c_in != c_out):
                shapes += [(c_out, c_in, 1, 1), (c_out,), (c_out,)]
        c_in = c_out
    return shapes + [(1000, 512), (1000,)]


RESNET18 = _resnet18()
FLAT_64M = [(64 * 1024 * 1024,)]


def numel(shapes) -> int:
    total = 0
    for shape in shapes:
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


assert numel(FMNIST_CNN) == 29_034 and len(FMNIST_CNN) == 10
assert numel(CIFAR_CNN) == 551_466
assert len(RESNET18) == 62 and numel(RESNET18) == 11_689_512
