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

{{/* repository@sha256:… when image.digest is set (the tag is then not used), else repository:tag. */}}
{{- define "tokengate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
"true" when the pod's preStop pause uses Kubernetes' own sleep action: tokengate.preStopMode
sleep on a cluster that has it on (1.30+: beta and on by default; in 1.29 it is alpha, behind
a feature gate that is off by default). Elsewhere the pause is an exec of the image's sleep.
*/}}
{{- define "tokengate.preStopSleepAction" -}}
{{- if and (eq .Values.tokengate.preStopMode "sleep") (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) }}true{{ end }}
{{- end }}

{{- define "tokengate.adminSecretName" -}}
{{- .Values.admin.existingSecret | default (printf "%s-admin" (include "tokengate.fullname" .)) }}
{{- end }}

{{/* Where the admin key file is mounted (admin.keyFrom: file), and the file in it. */}}
{{- define "tokengate.adminKeyDir" -}}/etc/tokengate-admin{{- end }}
{{- define "tokengate.adminKeyFile" -}}{{ include "tokengate.adminKeyDir" . }}/admin-key{{- end }}

{{/* The config's admin section: the listener, and the key from the mounted file or the env. */}}
{{- define "tokengate.adminConfig" -}}
listen: {{ printf "0.0.0.0:%d" (int .Values.tokengate.adminPort) | quote }}
{{- if eq .Values.admin.keyFrom "env" }}
key_env: {{ .Values.admin.keyEnv | quote }}
{{- else }}
key_file: {{ include "tokengate.adminKeyFile" . | quote }}
{{- end }}
{{- end }}

{{/* "true" when the store is a database (postgres or mysql) shared by replicas, else "". */}}
{{- define "tokengate.sqlStore" -}}
{{- if has .Values.store.kind (list "postgres" "mysql") }}true{{ end }}
{{- end }}

{{/*
Labels of the migrate Job's pod. Not the selector labels: the Service and the
PodDisruptionBudget must never count that pod as one of tokengate's.
*/}}
{{- define "tokengate.migrateLabels" -}}
helm.sh/chart: {{ include "tokengate.chart" . }}
app.kubernetes.io/name: {{ include "tokengate.name" . }}-migrate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: migrate
{{- end }}

{{/* The database URL's environment variable, from the existing Secret. */}}
{{- define "tokengate.databaseEnv" -}}
- name: {{ .Values.store.database.urlEnv }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.database.existingSecret }}
      key: {{ .Values.store.database.secretKey }}
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
{{- if not (has .Values.store.kind (list "sled" "postgres" "mysql")) }}
{{- fail (printf "store.kind must be sled, postgres or mysql, not %q" (toString .Values.store.kind)) }}
{{- end }}
{{- if include "tokengate.sqlStore" . }}
{{- if not .Values.store.database.existingSecret }}
{{- fail (printf "store.kind %s needs store.database.existingSecret: the name of an existing Secret holding the database URL under the key store.database.secretKey (%s); the chart never takes the URL itself" .Values.store.kind .Values.store.database.secretKey) }}
{{- end }}
{{- $env := .Values.store.database.urlEnv }}
{{- if or (eq $env .Values.admin.keyEnv) (eq $env "TOKENGATE_CONFIG") }}
{{- fail (printf "store.database.urlEnv %q is already used (admin.keyEnv or TOKENGATE_CONFIG): name another variable" $env) }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (gt (int .Values.replicaCount) 1) (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "podDisruptionBudget needs maxUnavailable or minAvailable (or enabled: false)" }}
{{- end }}
{{- else if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d, but store.kind is sled: the embedded sled store is one database on one volume, which exactly one tokengate process may hold. Set replicaCount to 1, or use a database shared by the replicas (store.kind postgres or mysql, with store.database.existingSecret)" (int .Values.replicaCount)) }}
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
never break the YAML. Keys set by the chart: listen, upstream, store.path (sled) or
store.kind and store.url_env (a database: the name of the variable, never the URL), admin.
Of config.store, only the keys of the chosen kind of store are rendered (tokengate refuses
the others).
*/}}
{{- define "tokengate.config" -}}
{{- $c := .Values.config }}
{{- $store := dict }}
{{- $keys := list "cache_mb" }}
{{- if include "tokengate.sqlStore" . }}
{{- $store = dict "kind" .Values.store.kind "url_env" .Values.store.database.urlEnv }}
{{- $keys = list "tokens_table" "tokenable_type" "read_only" "sync_interval_ms" "max_stale_seconds" }}
{{- else }}
{{- $store = dict "path" "/data/tokengate" }}
{{- end }}
{{- $given := $c.store | default dict }}
{{- range $key := $keys }}
{{- if and (hasKey $given $key) (not (kindIs "invalid" (get $given $key))) }}
{{- $_ := set $store $key (get $given $key) }}
{{- end }}
{{- end }}
{{- $cfg := dict
  "listen" (printf "0.0.0.0:%d" (int .Values.tokengate.port))
  "upstream" (include "tokengate.upstream" .)
  "store" $store
  "admin" (include "tokengate.adminConfig" . | fromYaml)
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
