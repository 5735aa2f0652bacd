"""Faithful copies of the structure of torchvision's resnet18, vgg11_bn and alexnet (torchvision 0.2x, models/resnet.py,
vgg.py, alexnet.py): the same modules in the same order with the same constructor arguments and forward
methods, written as plain torch modules (torchvision's wheel for torch 2.13.0 is built for CUDA torch and does
not import on these machines). ``width`` multiplies every channel count (1: the models themselves), for the
widened copies whose Monte Carlo the tests compare with the limit. Weights are torch's defaults, not
torchvision's own initialization (from_torch(init='parameters') reads those when they are used).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, groups=1, bias=False,
                               dilation=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, groups=1, bias=False, dilation=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, width=1):
        super().__init__()
        self.inplanes = 64 * width
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64 * width, layers[0])
        self.layer2 = self._make_layer(128 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(256 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(512 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * width, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def resnet18(num_classes=1000, width=1):
    return ResNet((2, 2, 2, 2), num_classes, width)


class _FeaturesClassifier(nn.Module):
    """torchvision's forward of VGG and AlexNet (the same lines in both)."""

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


class VGG(_FeaturesClassifier):
    def __init__(self, features, num_classes=1000, dropout=0.5, hidden=4096):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        channels = [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes))


def make_layers(cfg, batch_norm=False):
    layers, in_channels = [], 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def vgg11_bn(num_classes=1000, width=1, hidden=4096):
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    return VGG(make_layers([v if v == "M" else v * width for v in cfg], batch_norm=True), num_classes,
               hidden=hidden * width)


class AlexNet(_FeaturesClassifier):
    def __init__(self, num_classes=1000, dropout=0.5, width=1):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, 64 * w, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64 * w, 192 * w, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192 * w, 384 * w, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384 * w, 256 * w, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256 * w, 256 * w, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * w * 6 * 6, 4096 * w), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096 * w, 4096 * w), nn.ReLU(inplace=True),
            nn.Linear(4096 * w, num_classes))


def alexnet(num_classes=1000, width=1):
    return AlexNet(num_classes, width=width)
