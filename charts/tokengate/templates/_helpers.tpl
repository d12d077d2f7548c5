{{/* Names and labels. */}}
{{- define "tokengate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokengate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tokengate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokengate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokengate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokengate.labels" -}}
helm.sh/chart: {{ include "tokengate.chart" . }}
{{ include "tokengate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{- define "tokengate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokengate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tokengate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "tokengate.adminSecretName" -}}
{{- .Values.admin.existingSecret | default (printf "%s-admin" (include "tokengate.fullname" .)) }}
{{- end }}

{{- define "tokengate.claimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "tokengate.fullname" .)) }}
{{- end }}

{{/* Where tokengate forwards allowed requests. */}}
{{- define "tokengate.upstream" -}}
{{- if eq .Values.mode "sidecar" }}
{{- printf "http://127.0.0.1:%d" (int .Values.app.port) }}
{{- else }}
{{- .Values.upstream.url }}
{{- end }}
{{- end }}

{{/*
Refuses values that would render a broken deployment. The schema catches most of these
first; these checks also hold with --skip-schema-validation and give the reason.
*/}}
{{- define "tokengate.validate" -}}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d, but the token store is an embedded sled database on one volume, which exactly one tokengate process may hold: set replicaCount to 1 (several replicas need a shared store, which this version does not have)" (int .Values.replicaCount)) }}
{{- end }}
{{- if not (has .Values.mode (list "sidecar" "standalone")) }}
{{- fail (printf "mode must be sidecar or standalone, not %q" (toString .Values.mode)) }}
{{- end }}
{{- if eq .Values.mode "sidecar" }}
{{- if not .Values.app.image.repository }}
{{- fail "mode: sidecar needs app.image.repository (and app.image.tag): the image of the app tokengate protects" }}
{{- end }}
{{- if not .Values.app.image.tag }}
{{- fail "mode: sidecar needs app.image.tag" }}
{{- end }}
{{- $app := int .Values.app.port }}
{{- if or (eq $app (int .Values.tokengate.port)) (eq $app (int .Values.tokengate.adminPort)) }}
{{- fail (printf "app.port %d collides with tokengate.port or tokengate.adminPort: the containers share the pod's network" $app) }}
{{- end }}
{{- else }}
{{- if not (regexMatch "^http://[^/?#]+$" (.Values.upstream.url | default "")) }}
{{- fail (printf "mode: standalone needs upstream.url as http://host:port without a path, got %q" (.Values.upstream.url | default "")) }}
{{- end }}
{{- end }}
{{- if eq (int .Values.tokengate.port) (int .Values.tokengate.adminPort) }}
{{- fail "tokengate.port and tokengate.adminPort must differ" }}
{{- end }}
{{- $stop := include "tokengate.stopSeconds" . | int }}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) }}
{{- if le (int .Values.terminationGracePeriodSeconds) $stop }}
{{- fail (printf "terminationGracePeriodSeconds is %d, but stopping takes up to %d s (tokengate.preStopSleepSeconds + config.shutdown_grace_seconds): Kubernetes would kill tokengate before it has drained and flushed its store; raise it, or leave it null" (int .Values.terminationGracePeriodSeconds) $stop) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Seconds from the start of the preStop pause until tokengate has drained. */}}
{{- define "tokengate.stopSeconds" -}}
{{- $grace := .Values.config.shutdown_grace_seconds }}
{{- if kindIs "invalid" $grace }}{{ $grace = 30 }}{{ end }}
{{- add (int .Values.tokengate.preStopSleepSeconds) (int $grace) }}
{{- end }}

{{/* terminationGracePeriodSeconds: as set, or the pause + the drain + 10 s for the flush. */}}
{{- define "tokengate.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (include "tokengate.stopSeconds" . | int) 10 }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The tokengate config file. Built as a dict and rendered with toYaml, so that values can
never break the YAML. Keys set by the chart: listen, upstream, store.path, admin.
*/}}
{{- define "tokengate.config" -}}
{{- $c := .Values.config }}
{{- $store := dict "path" "/data/tokengate" }}
{{- if not (kindIs "invalid" $c.store.cache_mb) }}
{{- $_ := set $store "cache_mb" $c.store.cache_mb }}
{{- end }}
{{- $cfg := dict
  "listen" (printf "0.0.0.0:%d" (int .Values.tokengate.port))
  "upstream" (include "tokengate.upstream" .)
  "store" $store
  "admin" (dict "listen" (printf "0.0.0.0:%d" (int .Values.tokengate.adminPort)) "key_env" .Values.admin.keyEnv)
  "abilities" ($c.abilities | default list)
  "default_abilities" ($c.default_abilities | default list)
  "trusted_proxies" ($c.trusted_proxies | default list)
  "routes" $c.routes
}}
{{- if not (kindIs "invalid" $c.workers) }}
{{- $_ := set $cfg "workers" $c.workers }}
{{- end }}
{{- range $section := list "tokens" "sessions" "headers" "timeouts" "limits" "access_log" }}
{{- with (get $c $section) }}
{{- $_ := set $cfg $section . }}
{{- end }}
{{- end }}
{{- if not (kindIs "invalid" $c.shutdown_grace_seconds) }}
{{- $_ := set $cfg "shutdown_grace_seconds" $c.shutdown_grace_seconds }}
{{- end }}
{{- range $key, $value := .Values.extraConfig }}
{{- if hasKey $cfg $key }}
{{- fail (printf "extraConfig.%s: the chart already renders this key; set it through its own value" $key) }}
{{- end }}
{{- $_ := set $cfg $key $value }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
