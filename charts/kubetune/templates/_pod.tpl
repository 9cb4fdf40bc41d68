{{/*
What every pod of the chart shares: the Pod Security Standards "restricted" contexts, and
placement (GPU node affinity, tolerations, the scheduler) merged with the platform's values.
*/}}

{{/*
Pod securityContext ("restricted": runAsNonRoot, seccomp RuntimeDefault or Localhost).
values.schema.json refuses values that break the profile, so this renders them as given.
*/}}
{{- define "kubetune.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{/*
Container securityContext of every container, init containers included ("restricted": no
privilege escalation, all capabilities dropped; the root filesystem read-only by default).
*/}}
{{- define "kubetune.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/*
"true" when the pods annotate their Jobs with their progress (`progress.annotate`, rbac.yaml).
*/}}
{{- define "kubetune.annotatesProgress" -}}
{{- if (.Values.progress | default dict).annotate }}true{{ end }}
{{- end }}

{{/*
The projected volume `kube-api-token`: what automountServiceAccountToken would mount (token, CA, namespace), for
the one container that mounts it and with a token that expires hourly (the kubelet renews it). rbac.yaml says
what the token allows: patch the submission's own Jobs by name.
*/}}
{{- define "kubetune.apiTokenVolume" -}}
- name: kube-api-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3600
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end }}

{{/*
True ("true") when the training pods ask for GPUs.
*/}}
{{- define "kubetune.gpu" -}}
{{- if ne .Values.gpu.type "none" }}true{{ end }}
{{- end }}

{{/*
Node affinity of the training pods: the platform's `affinity`, with the GPU product term
(the placement's label In its values for `gpu.type`, see _gpu.tpl) added to EVERY required node
selector term, so that each alternative the platform allows is also of the requested GPU type.
`any` adds no term (any node with `nvidia.com/gpu`), `none` none either.
*/}}
{{- define "kubetune.trainingAffinity" -}}
{{- $affinity := deepCopy (.Values.affinity | default dict) }}
{{- $type := .Values.gpu.type }}
{{- if and (ne $type "none") (ne $type "any") }}
{{- $term := include "kubetune.gpuProductTerm" . | fromYaml }}
{{- $node := $affinity.nodeAffinity | default dict }}
{{- $required := $node.requiredDuringSchedulingIgnoredDuringExecution | default dict }}
{{- $terms := $required.nodeSelectorTerms | default (list dict) }}
{{- $merged := list }}
{{- range $terms }}
{{- $t := deepCopy . }}
{{- $_ := set $t "matchExpressions" (append ($t.matchExpressions | default list) $term) }}
{{- $merged = append $merged $t }}
{{- end }}
{{- $_ := set $required "nodeSelectorTerms" $merged }}
{{- $_ = set $node "requiredDuringSchedulingIgnoredDuringExecution" $required }}
{{- $_ = set $affinity "nodeAffinity" $node }}
{{- end }}
{{- if $affinity }}
{{- toYaml $affinity }}
{{- end }}
{{- end }}

{{/*
Tolerations of the training pods: `gpu.tolerations` for a GPU job, then the platform's
`tolerations` (an entry equal to one of ours is not repeated).
*/}}
{{- define "kubetune.trainingTolerations" -}}
{{- $all := list }}
{{- if include "kubetune.gpu" . }}
{{- $all = concat $all (.Values.gpu.tolerations | default list) }}
{{- end }}
{{- range .Values.tolerations }}
{{- if not (has . $all) }}
{{- $all = append $all . }}
{{- end }}
{{- end }}
{{- if $all }}
{{- toYaml $all }}
{{- end }}
{{- end }}

{{/*
Scheduling fields of a pod spec, shared by all pods: scheduler, priority, node selector.
*/}}
{{- define "kubetune.podScheduling" -}}
{{- with .Values.scheduling.schedulerName }}
schedulerName: {{ . }}
{{- end }}
{{- with .Values.scheduling.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Labels of a Job (or JobSet) object beyond the common ones: the Kueue queue.
*/}}
{{- define "kubetune.queueLabels" -}}
{{- with .Values.scheduling.queueName }}
kueue.x-k8s.io/queue-name: {{ . }}
{{- end }}
{{- end }}

{{/*
Pod annotations from scheduling values: the Volcano queue.
*/}}
{{- define "kubetune.schedulingPodAnnotations" -}}
{{- $volcano := .Values.scheduling.volcano | default dict }}
{{- if and $volcano.queue (ne .Values.scheduling.schedulerName "volcano") }}
{{- fail (printf "scheduling.volcano.queue is %q but scheduling.schedulerName is %q: Volcano only reads it for pods it schedules; set scheduling.schedulerName: volcano, or remove the queue" $volcano.queue .Values.scheduling.schedulerName) }}
{{- end }}
{{- with $volcano.queue }}
scheduling.volcano.sh/queue-name: {{ . }}
{{- end }}
{{- end }}

{{/*
Requests and limits of a container from a `resources` value: each cpu, memory and
ephemeral-storage limit not given equals its request. Memory: a pod above its request is the
first killed when the node runs short, so the limit makes the budget explicit (and /dev/shm,
memory too, is inside it). CPU: Guaranteed QoS (the static CPU manager's whole cores; a quota on
`limits.cpu` admits the pod); the request is sized so that the limit does not throttle.
Ephemeral storage: a pod that fills the node's disk is evicted either way; this way it is alone.
*/}}
{{- define "kubetune.resources" -}}
{{- $r := deepCopy (. | default dict) }}
{{- $requests := $r.requests | default dict }}
{{- $limits := $r.limits | default dict }}
{{- range $k := list "cpu" "memory" "ephemeral-storage" }}
{{- if and (hasKey $requests $k) (not (hasKey $limits $k)) }}
{{- $_ := set $limits $k (get $requests $k) }}
{{- end }}
{{- end }}
{{- if $limits }}
{{- $_ := set $r "limits" $limits }}
{{- end }}
{{- if $r }}
{{- toYaml $r }}
{{- end }}
{{- end }}
