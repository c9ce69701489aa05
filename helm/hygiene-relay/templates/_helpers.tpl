{{/* The chart's name, at most 63 characters. */}}
{{- define "hygiene-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-hygiene-relay (or the release name alone when it already says hygiene-relay). */}}
{{- define "hygiene-relay.fullname" -}}
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

{{- define "hygiene-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hygiene-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hygiene-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hygiene-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hygiene-relay.secretName" -}}
{{- default (include "hygiene-relay.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* The Redis settings in the relay's form (URL, {sentinels, name}, {cluster}), as YAML; empty without Redis. */}}
{{- define "hygiene-relay.redis" -}}
{{- $r := .Values.redis }}
{{- if eq $r.mode "url" }}
url: {{ required "redis.url is required with redis.mode url" $r.url | quote }}
{{- else if eq $r.mode "sentinel" }}
sentinels: {{ required "redis.sentinel.nodes is required with redis.mode sentinel" $r.sentinel.nodes | toYaml | nindent 2 }}
name: {{ required "redis.sentinel.name is required with redis.mode sentinel" $r.sentinel.name | quote }}
{{- with $r.password }}
password: {{ . | quote }}
{{- end }}
{{- else if eq $r.mode "cluster" }}
cluster: {{ required "redis.cluster.nodes is required with redis.mode cluster" $r.cluster.nodes | toYaml | nindent 2 }}
{{- with $r.password }}
password: {{ . | quote }}
{{- end }}
{{- else if ne $r.mode "none" }}
{{- fail (printf "redis.mode must be none, url, sentinel or cluster, not %q" $r.mode) }}
{{- end }}
{{- end }}

{{/* The top-level config sections kept in the Secret: clients always, the Redis-bearing ones when Redis has a password. */}}
{{- define "hygiene-relay.secretSections" -}}
{{- $r := .Values.redis }}
{{- if and (ne $r.mode "none") (or $r.password (contains "@" $r.url)) -}}
clients,dns,limits,delivery,memo
{{- else -}}
clients
{{- end }}
{{- end }}

{{/* The relay's whole configuration, as YAML: config with what the chart sets from the other values. */}}
{{- define "hygiene-relay.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "shutdownTimeout" (printf "%ds" (int .Values.shutdownTimeoutSeconds)) }}
{{- if .Values.proxyProtocol.enabled }}
{{- $addresses := required "proxyProtocol.loadBalancerAddresses is required with proxyProtocol.enabled" .Values.proxyProtocol.loadBalancerAddresses }}
{{- range $cfg.listeners }}
{{- $_ := set . "proxyProtocol" $addresses }}
{{- end }}
{{- end }}
{{- $clients := default (dict) $cfg.clients }}
{{- with .Values.authUsers }}
{{- $_ := set $clients "users" . }}
{{- end }}
{{- $_ := set $cfg "clients" $clients }}
{{- $redisYaml := include "hygiene-relay.redis" . }}
{{- if $redisYaml }}
{{- $redis := fromYaml $redisYaml }}
{{- if hasKey $redis "url" }}
{{- $redis = $redis.url }}
{{- end }}
{{- $dns := default (dict) $cfg.dns }}
{{- $cache := default (dict) $dns.cache }}
{{- $_ := set $cache "redis" $redis }}
{{- $_ := set $dns "cache" $cache }}
{{- $_ := set $cfg "dns" $dns }}
{{- range $section := list "limits" "delivery" "memo" }}
{{- $s := default (dict) (index $cfg $section) }}
{{- $_ := set $s "redis" $redis }}
{{- $_ := set $cfg $section $s }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The sections of the configuration in the ConfigMap (public: true) or in the Secret (public: false). */}}
{{- define "hygiene-relay.configPart" -}}
{{- $cfg := include "hygiene-relay.config" .root | fromYaml }}
{{- $secret := splitList "," (include "hygiene-relay.secretSections" .root) }}
{{- $part := dict }}
{{- range $key, $value := $cfg }}
{{- if eq (has $key $secret) (not $.public) }}
{{- $_ := set $part $key $value }}
{{- end }}
{{- end }}
{{- toYaml $part }}
{{- end }}
