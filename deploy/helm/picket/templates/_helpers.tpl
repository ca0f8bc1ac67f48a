{{/* The objects' base name: the release name when it already says picket. */}}
{{- define "picket.fullname" -}}
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

{{- define "picket.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the agent's pods (immutable in a DaemonSet: never change them). */}}
{{- define "picket.selectorLabels" -}}
app.kubernetes.io/name: {{ include "picket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "picket.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "picket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "picket.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "picket.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "picket.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The agent's config file (picket run --config, docs/cli.md): every setting of the values as the
key of its `picket run` option, then `config`'s keys over them.
*/}}
{{- define "picket.config" -}}
{{- $v := .Values -}}
{{- $config := dict "rules" "/etc/picket/rules" "state" "/var/lib/picket" "host-root" "/host" "host-proc" "/proc" -}}
{{- $_ := set $config "listen" (printf "0.0.0.0:%v" $v.metrics.port) -}}
{{- $_ := set $config "output" (ternary (first $v.outputs) $v.outputs (eq (len $v.outputs) 1)) -}}
{{- if $v.trustedKeys.files -}}
{{- $keys := list -}}
{{- range $v.trustedKeys.files }}{{ $keys = append $keys (printf "/etc/picket/keys/%s" .) }}{{ end -}}
{{- $_ := set $config "trusted-key" $keys -}}
{{- end -}}
{{- $_ := set $config "probe" $v.probe -}}
{{- with $v.learning.period }}{{ $_ := set $config "learning-period" . }}{{ end -}}
{{- with $v.learning.forgetAfter }}{{ $_ := set $config "forget-after" . }}{{ end -}}
{{- with $v.state.capacity }}{{ $_ := set $config "state-capacity" . }}{{ end -}}
{{- with $v.state.bytesPerRule }}{{ $_ := set $config "state-bytes-per-rule" . }}{{ end -}}
{{- with $v.state.bytesTotal }}{{ $_ := set $config "state-bytes-total" . }}{{ end -}}
{{- toYaml (mergeOverwrite $config ($v.config | default dict)) -}}
{{- end -}}

{{/* securityContext.appArmorProfile is a field from Kubernetes 1.30 on; before, an annotation. */}}
{{- define "picket.appArmorField" -}}
{{- semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version -}}
{{- end -}}

{{/*
The container runtimes' metadata directories: a list of {name, host, mount} (mount is under
/host, where the agent's --host-root looks for the runtime's own path).
*/}}
{{- define "picket.runtimePaths" -}}
{{- $containerd := dict "name" "containerd" "host" "/run/containerd/io.containerd.runtime.v2.task" "mount" "/host/run/containerd/io.containerd.runtime.v2.task" -}}
{{- $crioRun := dict "name" "crio-run" "host" "/run/containers/storage/overlay-containers" "mount" "/host/run/containers/storage/overlay-containers" -}}
{{- $crioLib := dict "name" "crio-lib" "host" "/var/lib/containers/storage/overlay-containers" "mount" "/host/var/lib/containers/storage/overlay-containers" -}}
{{- $k3s := dict "name" "k3s-containerd" "host" "/run/k3s/containerd/io.containerd.runtime.v2.task" "mount" "/host/run/containerd/io.containerd.runtime.v2.task" -}}
{{- $runtime := .Values.containerRuntime -}}
{{- if eq $runtime "auto" -}}
{{- toYaml (list $containerd $crioRun $crioLib) -}}
{{- else if eq $runtime "containerd" -}}
{{- toYaml (list $containerd) -}}
{{- else if eq $runtime "crio" -}}
{{- toYaml (list $crioRun $crioLib) -}}
{{- else if eq $runtime "k3s" -}}
{{- toYaml (list $k3s) -}}
{{- else -}}
{{- fail (printf "containerRuntime: %q is not auto, containerd, crio or k3s" $runtime) -}}
{{- end -}}
{{- end -}}
