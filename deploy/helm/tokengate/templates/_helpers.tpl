{{/* Names and labels. */}}
{{- define "tokengate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tokengate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", within 63 characters. Call with (list $ "gateway"). */}}
{{- define "tokengate.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "tokengate.fullname" $root | trunc (int (sub 62 (len (index . 1)))) | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{- define "tokengate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tokengate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokengate
{{- end -}}

{{/* Selector labels of one component. Call with (list $ "gateway"). */}}
{{- define "tokengate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tokengate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tokengate.componentLabels" -}}
{{ include "tokengate.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tokengate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The chart's own Secret (URLs and keys given as values, generated keys). */}}
{{- define "tokengate.secretName" -}}
{{- include "tokengate.fullname" . -}}
{{- end -}}

{{- define "tokengate.configMapName" -}}
{{- .Values.models.existingConfigMap | default (include "tokengate.componentName" (list . "models")) -}}
{{- end -}}

{{- define "tokengate.controlUrl" -}}
{{- printf "http://%s:%v" (include "tokengate.componentName" (list . "control")) .Values.control.service.port -}}
{{- end -}}

{{/*
Checks the secret-like values: exactly one of a value and an existingSecret where one is
required. Call with (list "redis" .Values.redis "url" true).
*/}}
{{- define "tokengate.checkSource" -}}
{{- $what := index . 0 -}}
{{- $src := index . 1 -}}
{{- $field := index . 2 -}}
{{- $required := index . 3 -}}
{{- $value := index $src $field -}}
{{- if and $value $src.existingSecret -}}
{{- fail (printf "%s: set either %s.%s or %s.existingSecret, not both" $what $what $field $what) -}}
{{- end -}}
{{- if and $required (not $value) (not $src.existingSecret) -}}
{{- fail (printf "%s: set %s.%s (kept in the chart's Secret) or %s.existingSecret (a Secret of yours holding it under %s.existingSecretKey)" $what $what $field $what $what) -}}
{{- end -}}
{{- end -}}

{{- define "tokengate.validate" -}}
{{- include "tokengate.checkSource" (list "redis" .Values.redis "url" true) -}}
{{- include "tokengate.checkSource" (list "database" .Values.database "url" true) -}}
{{- include "tokengate.checkSource" (list "adminKey" .Values.adminKey "value" false) -}}
{{- include "tokengate.checkSource" (list "cacheSaltSecret" .Values.cacheSaltSecret "value" false) -}}
{{- $stripe := eq .Values.payments.provider "stripe" -}}
{{- include "tokengate.checkSource" (list "payments.stripe.apiKey" .Values.payments.stripe.apiKey "value" $stripe) -}}
{{- include "tokengate.checkSource" (list "payments.stripe.webhookSecret" .Values.payments.stripe.webhookSecret "value" $stripe) -}}
{{- if not (has .Values.payments.provider (list "" "test" "stripe")) -}}
{{- fail (printf "payments.provider: \"\", \"test\" or \"stripe\", not %q" .Values.payments.provider) -}}
{{- end -}}
{{- if not (or .Values.models.existingConfigMap .Values.models.config) -}}
{{- fail "models: set models.config (models.yaml's text) or models.existingConfigMap" -}}
{{- end -}}
{{- if and .Values.cacheSaltSecret.value (lt (len .Values.cacheSaltSecret.value) 32) -}}
{{- fail "cacheSaltSecret.value: at least 32 characters" -}}
{{- end -}}
{{- if lt (int .Values.gateway.workers) 1 -}}
{{- fail "gateway.workers: at least 1" -}}
{{- end -}}
{{- end -}}

{{/*
One env var from a secret-like value: the chart's Secret, or the existingSecret named.
Call with (list $ "REDIS_URL" .Values.redis "REDIS_URL").
*/}}
{{- define "tokengate.secretEnv" -}}
{{- $root := index . 0 -}}
{{- $src := index . 2 -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      {{- if $src.existingSecret }}
      name: {{ $src.existingSecret }}
      key: {{ $src.existingSecretKey | default (index . 3) }}
      {{- else }}
      name: {{ include "tokengate.secretName" $root }}
      key: {{ index . 3 }}
      {{- end }}
{{- end -}}

{{/* Plain settings: the global env, then the component's (which wins). */}}
{{- define "tokengate.plainEnv" -}}
{{- $env := merge (deepCopy (index . 1)) (index . 0).Values.env -}}
{{- range $name := keys $env | sortAlpha }}
- name: {{ $name }}
  value: {{ index $env $name | toString | quote }}
{{- end }}
{{- end -}}

{{- define "tokengate.podSecurity" -}}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "tokengate.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if index . 1 }}
- name: models
  configMap:
    name: {{ include "tokengate.configMapName" (index . 0) }}
    items:
      - key: models.yaml
        path: models.yaml
{{- end }}
{{- with (index . 0).Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tokengate.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if index . 1 }}
- name: models
  mountPath: /etc/tokengate
  readOnly: true
{{- end }}
{{- with (index . 0).Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Roll the pods when the chart's catalog or Secret changes. */}}
{{- define "tokengate.checksums" -}}
{{- if not .Values.models.existingConfigMap }}
checksum/models: {{ .Values.models.config | sha256sum }}
{{- end }}
{{- /* the inputs, not the rendered Secret: a generated key is random in each render */}}
checksum/secret: {{ list .Values.redis .Values.database .Values.adminKey .Values.cacheSaltSecret .Values.payments | toJson | sha256sum }}
{{- end -}}
