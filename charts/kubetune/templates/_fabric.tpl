{{/*
RDMA fabric opt-ins of the training pods (`fabric.*`; never the export pod): EFA on AWS, InfiniBand
through the NVIDIA network operator. Each is off by default and named on its own, so that
values.schema.json keeps refusing, in `securityContext`, what breaks the "restricted" profile;
docs/chart.md ("Fabric: EFA and InfiniBand") says which Pod Security level each one needs.
*/}}

{{/*
Pod spec fields of the training pods: the RuntimeClass, and the host network with the DNS policy
that keeps cluster names (rank 0's `<job>-0.<job>`) resolvable from it.
*/}}
{{- define "kubetune.fabricPodSpec" -}}
{{- $fabric := .Values.fabric | default dict }}
{{- with $fabric.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- if $fabric.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end }}

{{/*
Container securityContext of the trainer and `preflight` containers (both run NCCL): the chart's
`securityContext`, plus IPC_LOCK with `fabric.ipcLock` (RDMA pins memory). The export container
uses "kubetune.containerSecurityContext" as it is.
*/}}
{{- define "kubetune.trainingContainerSecurityContext" -}}
{{- $sc := deepCopy .Values.securityContext }}
{{- if (.Values.fabric | default dict).ipcLock }}
{{- $caps := $sc.capabilities | default dict }}
{{- $add := $caps.add | default list }}
{{- if not (has "IPC_LOCK" $add) }}
{{- $add = append $add "IPC_LOCK" }}
{{- end }}
{{- $_ := set $caps "add" $add }}
{{- $_ = set $sc "capabilities" $caps }}
{{- end }}
{{- toYaml $sc }}
{{- end }}

{{/*
The training containers' resources (a dict, given as "resources" with the root as "root") with
`fabric.resources` added to both requests and limits: extended resources and hugepages cannot be
overcommitted, so Kubernetes wants them equal. A name also set in `resources` is refused.
*/}}
{{- define "kubetune.withFabricResources" -}}
{{- $r := deepCopy (.resources | default dict) }}
{{- $extra := (.root.Values.fabric | default dict).resources | default dict }}
{{- if $extra }}
{{- $requests := $r.requests | default dict }}
{{- $limits := $r.limits | default dict }}
{{- range $name, $quantity := $extra }}
{{- if or (hasKey $requests $name) (hasKey $limits $name) }}
{{- fail (printf "resources sets %s, and so does fabric.resources: set it in fabric.resources only (it goes into the requests and the limits)" $name) }}
{{- end }}
{{- $_ := set $requests $name $quantity }}
{{- $_ = set $limits $name $quantity }}
{{- end }}
{{- $_ := set $r "requests" $requests }}
{{- $_ = set $r "limits" $limits }}
{{- end }}
{{- if $r }}
{{- toYaml $r }}
{{- end }}
{{- end }}

{{/*
`fabric.volumeMounts` (list items, for a container's `volumeMounts:`); each must name one of
`fabric.volumes`.
*/}}
{{- define "kubetune.fabricVolumeMounts" -}}
{{- $fabric := .Values.fabric | default dict }}
{{- $names := list }}
{{- range ($fabric.volumes | default list) }}
{{- $names = append $names .name }}
{{- end }}
{{- range ($fabric.volumeMounts | default list) }}
{{- if not (has .name $names) }}
{{- fail (printf "fabric.volumeMounts mounts %q, which is not in fabric.volumes (%s)" .name (join ", " $names)) }}
{{- end }}
{{- end }}
{{- with $fabric.volumeMounts }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
`fabric.volumes` (list items, for the pod's `volumes:`).
*/}}
{{- define "kubetune.fabricVolumes" -}}
{{- with (.Values.fabric | default dict).volumes }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
Annotations of the training pods from values: `podAnnotations` (every pod), then
`fabric.podAnnotations` (training pods only, e.g. a Multus network; wins on a clash).
*/}}
{{- define "kubetune.trainingPodAnnotations" -}}
{{- $all := mustMergeOverwrite (deepCopy (.Values.podAnnotations | default dict)) ((.Values.fabric | default dict).podAnnotations | default dict) }}
{{- with $all }}
{{- toYaml . }}
{{- end }}
{{- end }}
