{{/*
Expand the name of the chart.
*/}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of this submission: the Job, its headless Service and ConfigMap all carry it.
`job.name` when set (launch sets a unique one), else derived from the release name.
*/}}
{{- define "kubetune.fullname" -}}
{{- if .Values.job.name }}
{{- .Values.job.name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
kubetune.dev/job: {{ include "kubetune.specName" . | quote }}
kubetune.dev/submission: {{ include "kubetune.fullname" . | quote }}
{{- with .Values.job.matrixGroup }}
kubetune.dev/matrix: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The spec's `name` (the `kubetune.dev/job` label that groups the submissions of one spec):
`job.specName` (launch sets it), else read from the spec itself.
*/}}
{{- define "kubetune.specName" -}}
{{- $fromSpec := (fromYaml (.Values.spec | default "")).name | default "" | toString }}
{{- default $fromSpec .Values.job.specName | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Address of the rank-0 pod: `<job>-0.<service>` (Indexed Job hostname + pod subdomain).
*/}}
{{- define "kubetune.masterAddr" -}}
{{- $fullname := include "kubetune.fullname" . }}
{{- if .Values.jobset.enabled }}
{{- /* JobSet names pod i `<jobset>-<replicatedJob>-<job index>-<i>` in the subdomain `<jobset>` */}}
{{- printf "%s-%s-0-0.%s" $fullname (include "kubetune.jobsetReplicatedJob" .) $fullname }}
{{- else }}
{{- printf "%s-0.%s" $fullname $fullname }}
{{- end }}
{{- end }}

{{/*
Name of the JobSet's one replicated Job (its pods are `<jobset>-node-0-<rank>`).
*/}}
{{- define "kubetune.jobsetReplicatedJob" -}}
node
{{- end }}

{{/*
Where the ConfigMap (spec.yaml, accelerate.yaml) is mounted.
*/}}
{{- define "kubetune.configDir" -}}
/etc/kubetune
{{- end }}

{{/*
Name of the Job the training rank 0 annotates with its progress (KUBETUNE_PROGRESS_JOB; the Role of rbac.yaml):
the training Job, or the JobSet's one Job (`<jobset>-<replicatedJob>-0`).
*/}}
{{- define "kubetune.trainingJobName" -}}
{{- if .Values.jobset.enabled }}
{{- printf "%s-%s-0" (include "kubetune.fullname" .) (include "kubetune.jobsetReplicatedJob" .) }}
{{- else }}
{{- include "kubetune.fullname" . }}
{{- end }}
{{- end }}

{{/*
Name of the export Job: the training rank 0 starts it (KUBETUNE_EXPORT_JOB; the Role of rbac.yaml).
*/}}
{{- define "kubetune.exportJobName" -}}
{{- printf "%s-export" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
An image reference from an image value (`image`, `export.image`) and the root context:
`repository:tag` (the tag defaults to the chart's appVersion), `repository:tag@digest` when
`digest` is set: the kubelet pulls by the digest, the tag stays for people to read.
Usage: include "kubetune.image" (list .Values.image .)
*/}}
{{- define "kubetune.image" -}}
{{- $image := index . 0 | default dict }}
{{- $root := index . 1 }}
{{- printf "%s:%s" $image.repository ($image.tag | default $root.Chart.AppVersion) }}
{{- with $image.digest }}@{{ . }}{{ end }}
{{- end }}
