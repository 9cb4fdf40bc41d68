{{/*
GPU placement presets (`gpu.placement`): the node label that tells a node's GPU model, and its
values per GPU type, for NVIDIA GPU feature discovery (the GPU operator), GKE and EKS. The types
are the spec's `resources.gpu` kinds (launcher/plan/fit.py KINDS; tests/unit/test_gpu_catalog.py
keeps the three in step). `gpu.productLabel` and `gpu.products.<type>` override a preset.
- nvidia-gfd: `nvidia.com/gpu.product` is the board name with '-' for spaces (`nvidia-smi -L`).
- gke: `cloud.google.com/gke-accelerator`; GKE offers no L40S and no A10G (their lists are empty).
- eks: `node.kubernetes.io/instance-type`, the EC2 instance types with that GPU.
*/}}
{{- define "kubetune.gpuPresets" -}}
nvidia-gfd:
  label: nvidia.com/gpu.product
  products:
    h100: [NVIDIA-H100-80GB-HBM3, NVIDIA-H100-SXM5-80GB, NVIDIA-H100-PCIe, NVIDIA-H100-NVL]
    h200: [NVIDIA-H200, NVIDIA-H200-NVL]
    b200: [NVIDIA-B200]
    a100: [NVIDIA-A100-SXM4-80GB, NVIDIA-A100-SXM4-40GB, NVIDIA-A100-80GB-PCIe, NVIDIA-A100-PCIE-40GB]
    l40s: [NVIDIA-L40S]
    a10g: [NVIDIA-A10G]
gke:
  label: cloud.google.com/gke-accelerator
  products:
    h100: [nvidia-h100-80gb, nvidia-h100-mega-80gb]
    h200: [nvidia-h200-141gb]
    b200: [nvidia-b200]
    a100: [nvidia-tesla-a100, nvidia-a100-80gb]
    l40s: []
    a10g: []
eks:
  label: node.kubernetes.io/instance-type
  products:
    h100: [p5.48xlarge]
    h200: [p5e.48xlarge, p5en.48xlarge]
    b200: [p6-b200.48xlarge]
    a100: [p4d.24xlarge, p4de.24xlarge]
    l40s: [g6e.xlarge, g6e.2xlarge, g6e.4xlarge, g6e.8xlarge, g6e.12xlarge, g6e.16xlarge, g6e.24xlarge, g6e.48xlarge]
    a10g: [g5.xlarge, g5.2xlarge, g5.4xlarge, g5.8xlarge, g5.12xlarge, g5.16xlarge, g5.24xlarge, g5.48xlarge]
{{- end }}

{{/*
The GPU product term of the training pods' node affinity for `gpu.type` (a dict, as YAML):
`gpu.productLabel` (else the preset's label) In `gpu.products.<type>` (else the preset's values).
Fails when the list is empty.
*/}}
{{- define "kubetune.gpuProductTerm" -}}
{{- $type := .Values.gpu.type }}
{{- $placement := .Values.gpu.placement | default "nvidia-gfd" }}
{{- $preset := index (include "kubetune.gpuPresets" . | fromYaml) $placement }}
{{- $label := .Values.gpu.productLabel | default $preset.label }}
{{- $products := index (.Values.gpu.products | default dict) $type | default (index $preset.products $type) | default list }}
{{- if not $products }}
{{- fail (printf "gpu.products.%s is empty: list the %s values of your %s nodes (kubectl get nodes -L %s); the %s placement preset has none" $type $label (upper $type) $label $placement) }}
{{- end }}
{{- toYaml (dict "key" $label "operator" "In" "values" $products) }}
{{- end }}
