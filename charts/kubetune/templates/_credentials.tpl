{{/*
S3 and MLflow credentials. Each section (`s3`, `mlflow`) either names an existing Secret
(`existingSecret`, its keys in `secretKeys`) or gives values, which the chart puts into its own
Secret (secret.yaml). Either way the pods read them through `secretKeyRef`: no credential is
ever written into the ConfigMap, an env `value`, the NOTES or an annotation.

Each field: (section, value name, environment variable, optional in an existing Secret).
*/}}
{{- define "kubetune.credentialFields" -}}
- [s3, accessKeyId, AWS_ACCESS_KEY_ID, false]
- [s3, secretAccessKey, AWS_SECRET_ACCESS_KEY, false]
- [s3, sessionToken, AWS_SESSION_TOKEN, true]
- [s3, endpointUrl, AWS_ENDPOINT_URL, true]
- [mlflow, username, MLFLOW_TRACKING_USERNAME, true]
- [mlflow, password, MLFLOW_TRACKING_PASSWORD, true]
- [mlflow, token, MLFLOW_TRACKING_TOKEN, true]
{{- end }}

{{/*
Refuses credential values that contradict each other (nothing a user gave is dropped).
*/}}
{{- define "kubetune.checkCredentials" -}}
{{- range $section := list "s3" "mlflow" }}
{{- $v := index $.Values $section }}
{{- if $v.existingSecret }}
{{- range $field := list "accessKeyId" "secretAccessKey" "sessionToken" "endpointUrl" "username" "password" "token" }}
{{- if index $v $field }}
{{- fail (printf "%s.%s is set, but %s.existingSecret names the Secret %q, which the pods read instead: remove %s.%s (or put it into that Secret under the key in %s.secretKeys)" $section $field $section $v.existingSecret $section $field $section) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $f := include "kubetune.credentialFields" . | fromYamlArray }}
{{- $v := index $.Values (index $f 0) }}
{{- $key := index ($v.secretKeys | default dict) (index $f 1) | default (index $f 2) }}
{{- if and (not $v.existingSecret) (ne $key (index $f 2)) }}
{{- fail (printf "%s.secretKeys.%s is %q, but %s.existingSecret is empty: the key names are those of an existing Secret; set %s.existingSecret, or remove %s.secretKeys.%s" (index $f 0) (index $f 1) $key (index $f 0) (index $f 0) (index $f 0) (index $f 1)) }}
{{- end }}
{{- end }}
{{- if ne (empty .Values.s3.accessKeyId) (empty .Values.s3.secretAccessKey) }}
{{- fail "s3.accessKeyId and s3.secretAccessKey go together: give both (or s3.existingSecret, or neither to use the pod's workload identity)" }}
{{- end }}
{{- if and .Values.s3.sessionToken (not .Values.s3.accessKeyId) }}
{{- fail "s3.sessionToken needs s3.accessKeyId and s3.secretAccessKey" }}
{{- end }}
{{- if ne (empty .Values.mlflow.username) (empty .Values.mlflow.password) }}
{{- fail "mlflow.username and mlflow.password go together: give both, or mlflow.token instead" }}
{{- end }}
{{- if and .Values.mlflow.token .Values.mlflow.username }}
{{- fail "mlflow.token and mlflow.username/password are both set: give one way to authenticate to MLflow" }}
{{- end }}
{{- end }}

{{/*
The Secret the chart renders: {ENV_NAME: value} of every credential value given (empty: none).
*/}}
{{- define "kubetune.chartSecretData" -}}
{{- $data := dict }}
{{- range $f := include "kubetune.credentialFields" . | fromYamlArray }}
{{- $v := index $.Values (index $f 0) }}
{{- $value := index $v (index $f 1) }}
{{- if and (not $v.existingSecret) $value }}
{{- $_ := set $data (index $f 2) ($value | toString) }}
{{- end }}
{{- end }}
{{- if $data }}
{{- toYaml $data }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the chart renders.
*/}}
{{- define "kubetune.secretName" -}}
{{- include "kubetune.fullname" . }}
{{- end }}

{{/*
Env entries (a YAML list) that read the credentials from their Secret.
*/}}
{{- define "kubetune.credentialEnv" -}}
{{- include "kubetune.checkCredentials" . }}
{{- $own := include "kubetune.chartSecretData" . | fromYaml }}
{{- $env := list }}
{{- range $f := include "kubetune.credentialFields" . | fromYamlArray }}
{{- $section := index $f 0 }}
{{- $field := index $f 1 }}
{{- $name := index $f 2 }}
{{- $v := index $.Values $section }}
{{- if and (hasKey ($.Values.env | default dict) $name) (or $v.existingSecret (hasKey $own $name)) }}
{{- fail (printf "env.%s is also read from the %s credentials Secret: remove it from env (a credential in env would be written into the Job in plain text)" $name $section) }}
{{- end }}
{{- if $v.existingSecret }}
{{- $key := index ($v.secretKeys | default dict) $field | default $name }}
{{- $ref := dict "name" $v.existingSecret "key" $key }}
{{- if index $f 3 }}
{{- $_ := set $ref "optional" true }}
{{- end }}
{{- $env = append $env (dict "name" $name "valueFrom" (dict "secretKeyRef" $ref)) }}
{{- else if hasKey $own $name }}
{{- $ref := dict "name" (include "kubetune.secretName" $) "key" $name }}
{{- $env = append $env (dict "name" $name "valueFrom" (dict "secretKeyRef" $ref)) }}
{{- end }}
{{- end }}
{{- if $env }}
{{- toYaml $env }}
{{- end }}
{{- end }}
